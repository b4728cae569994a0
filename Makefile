# selfannounce. `sudo make lab` runs the migration lab; `sudo make test` runs
# every test, end-to-end ones included.
GO      ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
# sudo's secure_path drops Go's directory; tests that build the binary need it.
export PATH := $(dir $(GO)):$(PATH)
BIN     := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/selfannounce/selfannounce/internal/cli.Version=$(VERSION)
export CGO_ENABLED ?= 0
.DEFAULT_GOAL := build

.PHONY: all build deps deps-lab deps-vm lab test unit race vet fmt-check fuzz bench clean

# Debian packages the lab and the tests run on. Installed only when missing.
LAB_PKGS  := iproute2 iputils-ping $(if $(findstring --ovs,$(LAB_FLAGS)),openvswitch-switch)
TEST_PKGS := $(LAB_PKGS) qemu-system-x86 openvswitch-switch libvirt-daemon libvirt-clients \
	libvirt-daemon-driver-qemu libcap2-bin iputils-arping rpm man-db dpkg-dev strace curl systemd
define apt_install
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

deps-lab:
	$(call apt_install,$(LAB_PKGS))

deps:
	$(call apt_install,$(TEST_PKGS))

# The kernel VM tests (internal/vm, e2e/kernel) boot Debian's own kernel and
# Xen under QEMU. The kernel .deb is only downloaded, never installed: the
# tests unpack it. Its ABI is whatever linux-image-amd64 points at today.
VM_DEB_DIR := /var/cache/selfannounce/debs
VM_PKGS    := qemu-system-x86 qemu-system-xen busybox-static kmod dpkg xen-hypervisor-4.17-amd64 xen-utils-4.17
deps-vm:
	$(call apt_install,$(VM_PKGS))
	@abi=$$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: linux-image-\([0-9].*-amd64\)$$/\1/p' | head -n1); \
	if [ -z "$$abi" ]; then echo "deps-vm: apt-cache depends linux-image-amd64 names no kernel"; exit 1; fi; \
	if ! ls $(VM_DEB_DIR)/linux-image-$${abi}_*_amd64.deb >/dev/null 2>&1; then \
		mkdir -p $(VM_DEB_DIR) && cd $(VM_DEB_DIR) && apt-get download -q linux-image-$$abi; \
	fi

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/announce ./cmd/announce
	$(GO) build -trimpath -o $(BIN)/selfannounce-lab ./cmd/selfannounce-lab
	$(GO) build -trimpath -o $(BIN)/selfannounce-vm ./cmd/selfannounce-vm

# The main job: a silent VM migrates between two hosts in network
# namespaces, without and with selfannounce.
# LAB_FLAGS=--ovs runs the same migration between Open vSwitch hosts.
# LAB_FLAGS=--xen boots real Xen under QEMU and migrates a real PVH guest.
lab: deps-lab $(if $(findstring --xen,$(LAB_FLAGS)),deps-vm) build
	$(BIN)/selfannounce-lab --announce $(BIN)/announce $(LAB_FLAGS)

# Every test. End-to-end tests need root; SELFANNOUNCE_E2E=require (CI) makes
# a skipped one fail.
# The package tests inspect and install the .deb and .rpm built first;
# e2e/systemd installs them in a VM booted with systemd as init.
# The end-to-end packages run one at a time: their loss and latency bounds
# are about the agent, not about sharing two cores with a QEMU under TCG.
test: deps deps-vm build packages
	SELFANNOUNCE_PACKAGES=$(PKG_DIST) $(GO) test -count=1 -timeout 40m $$($(GO) list ./... | grep -v /e2e/)
	SELFANNOUNCE_PACKAGES=$(PKG_DIST) $(GO) test -count=1 -p 1 -timeout 40m ./e2e/...

unit:
	$(GO) test -count=1 -short ./...

race:
	CGO_ENABLED=1 $(GO) test -race -count=1 -short ./announce/...

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# Every fuzzer of outside input, FUZZTIME each; the list is in .ci/fuzz.
FUZZTIME ?= 6s
fuzz:
	GO=$(GO) FUZZTIME=$(FUZZTIME) .ci/fuzz


clean:
	rm -rf $(BIN) dist

-include packaging/packaging.mk
-include bench/bench.mk
