# Packaging targets for selfannounce. Included by the top-level Makefile;
# also usable alone:  make -f packaging/packaging.mk packages
#
#   packages         dist/selfannounce_<v>-1_<arch>.deb and dist/selfannounce-<v>-1.<arch>.rpm
#   packages-deb     only the .deb
#   packages-rpm     only the .rpm
#   package-docs     man pages and shell completions into $(PKG_STAGE)
#   packages-test    build the packages, then inspect, install, upgrade and
#                    remove them (needs root, dpkg, rpm, man-db, systemd-analyze)
#   packages-clean   remove $(PKG_STAGE) and the packages in $(PKG_DIST)
#   unit-security    print the unit's systemd-analyze exposure score
#
# Variables (override on the command line):
#   PKG_VERSION  package version, default derived from $(VERSION) (git describe), see below
#   PKG_ARCH     Go architecture, default from `go env GOARCH`
#   PKG_DIST     output directory, default dist
#   PKG_BIN      the binary to package, default bin/announce (built by `make build`)
#   PKG_HOOKS    hooks tree, default hooks
#   PKG_STAGE    generated files (binary, man, completions, docs), default dist/.stage
#   NFPM         the nfpm command, default `go run` of NFPM_VERSION

PKG_ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))/..)

# git describe output (v1.2.0, v1.2.0-3-gabc1234, abc1234-dirty, dev) becomes
# a version both dpkg and rpm order correctly: 1.2.0, 1.2.0+git3.abc1234,
# and 0.0.0 when there is no release tag yet.
ifeq ($(origin PKG_VERSION),undefined)
PKG_VERSION := $(or $(shell echo '$(VERSION)' | sed -nE \
	's/^v?([0-9]+\.[0-9]+\.[0-9]+)(-dirty)?$$/\1/p; s/^v?([0-9]+\.[0-9]+\.[0-9]+)-([0-9]+)-g([0-9a-f]+)(-dirty)?$$/\1+git\2.\3/p'),0.0.0)
endif
PKG_ARCH    ?= $(shell go env GOARCH)
PKG_DIST    ?= $(PKG_ROOT)/dist
PKG_BIN     ?= $(PKG_ROOT)/bin/announce
PKG_HOOKS   ?= $(PKG_ROOT)/hooks
PKG_STAGE   ?= $(PKG_ROOT)/dist/.stage

# 2.45.2, not 2.48.0: from 2.46 nfpm needs go.digitalxero.dev modules the
# module proxy refuses to serve. `go run pkg@version` caches the built tool.
NFPM_VERSION ?= v2.45.2
NFPM ?= go run github.com/goreleaser/nfpm/v2/cmd/nfpm@$(NFPM_VERSION)

# Hooks written by the hypervisor integrations; the package is incomplete
# without any of them.
PKG_HOOK_FILES := xapi-vm-post-migrate xen-vif-post.hook libvirt-qemu

# Reproducible man page dates when the caller sets it. Exported only when
# set: an empty SOURCE_DATE_EPOCH makes groff (man) fail.
ifneq ($(SOURCE_DATE_EPOCH),)
export SOURCE_DATE_EPOCH
endif

.PHONY: packages packages-deb packages-rpm package-docs package-binary package-stage packages-test packages-clean unit-security

packages: packages-deb packages-rpm

packages-deb packages-rpm: packages-%: package-stage
	@mkdir -p $(PKG_DIST)
	cd $(PKG_ROOT) && PKG_VERSION=$(PKG_VERSION) PKG_ARCH=$(PKG_ARCH) PKG_STAGE=$(PKG_STAGE) PKG_HOOKS=$(PKG_HOOKS) \
		$(NFPM) package --config packaging/nfpm.yaml --packager $(subst packages-,,$@) --target $(PKG_DIST)/

# The binary comes from the top-level `make build` so the packaged one is
# the one CI tested, with the same flags and version stamp.
package-binary:
	$(MAKE) -C $(PKG_ROOT) build
	@test -x $(PKG_BIN) || { echo "packaging: $(PKG_BIN) missing after make build" >&2; exit 1; }

package-docs: package-binary
	rm -rf $(PKG_STAGE)/man $(PKG_STAGE)/completions
	$(PKG_BIN) gendocs --man $(PKG_STAGE)/man --completions $(PKG_STAGE)/completions
	gzip -9n $(PKG_STAGE)/man/*.8

package-stage: package-docs
	@for h in $(PKG_HOOK_FILES); do \
		test -f $(PKG_HOOKS)/$$h || { echo "packaging: hook $(PKG_HOOKS)/$$h missing" >&2; exit 1; }; \
	done
	install -m 0755 $(PKG_BIN) $(PKG_STAGE)/announce
	rm -rf $(PKG_STAGE)/doc && mkdir -p $(PKG_STAGE)/doc
	cp $(PKG_ROOT)/docs/*.md $(PKG_ROOT)/docs/*.svg $(PKG_ROOT)/docs/*.json $(PKG_STAGE)/doc/
	@if [ -f $(PKG_ROOT)/README.md ]; then cp $(PKG_ROOT)/README.md $(PKG_STAGE)/doc/; fi
	@for l in $(PKG_ROOT)/LICENSE $(PKG_ROOT)/LICENSE.md $(PKG_ROOT)/COPYING; do \
		if [ -f $$l ]; then cp $$l $(PKG_STAGE)/doc/copyright; break; fi; \
	done

# The package tests skip unless SELFANNOUNCE_PACKAGES names the directory
# holding the packages under test.
packages-test: packages
	cd $(PKG_ROOT) && SELFANNOUNCE_PACKAGES=$(PKG_DIST) go test -count=1 -v ./packaging/

packages-clean:
	rm -rf $(PKG_STAGE)
	rm -f $(PKG_DIST)/selfannounce_*.deb $(PKG_DIST)/selfannounce-*.rpm

unit-security:
	systemd-analyze security --offline=true --no-pager $(PKG_ROOT)/systemd/selfannounce.service
