# selfannounce. `sudo make lab` runs the migration lab; `sudo make test` runs
# every test, end-to-end ones included.
GO      ?= go
BIN     := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/selfannounce/selfannounce/internal/cli.Version=$(VERSION)
export CGO_ENABLED ?= 0

.PHONY: all build lab test unit e2e race vet fmt-check fuzz bench clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/announce ./cmd/announce
	$(GO) build -trimpath -o $(BIN)/selfannounce-lab ./cmd/selfannounce-lab

# The main job: a silent VM migrates between two hosts in network
# namespaces, without and with selfannounce.
lab: build
	$(BIN)/selfannounce-lab --announce $(BIN)/announce

# Every test. End-to-end tests need root; SELFANNOUNCE_E2E=require (CI) makes
# a skipped one fail.
test: build
	$(GO) test -count=1 -timeout 20m ./...

unit:
	$(GO) test -count=1 -short ./...

race:
	CGO_ENABLED=1 $(GO) test -race -count=1 -short ./announce/...

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDecode -fuzztime 15s ./announce/sniff
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime 15s ./announce/config

bench: build
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./announce/frame | tee bench-frame.txt

clean:
	rm -rf $(BIN) dist

-include packaging/packaging.mk
