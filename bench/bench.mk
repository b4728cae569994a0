# `sudo make bench` measures the frame builder and the burst engine with Go
# benchmarks, then the real daemon in network namespaces (reaction latency,
# 200 arrivals at once, idle cost with 1000 ports, the `ip monitor` +
# arping baseline, a Linux arrival with xenstored and ovs-vswitchd wedged,
# and a soak of 20 000 arrivals and departures with netlink overruns and
# SIGHUPs), and rewrites the generated section of docs/performance.md. Root
# is needed for the namespaces; the baseline needs iputils' arping (Debian:
# iputils-arping), the wedged phase Open vSwitch (openvswitch-switch).
#
# BENCH_FLAGS passes options to cmd/selfannounce-bench, e.g.
#   sudo make bench BENCH_FLAGS='--idle 10s --phases latency,arrivals --doc ""'
#   sudo make bench BENCH_FLAGS='--phases soak --soak-arrivals 1000 --doc ""'
GO          ?= go
BIN         ?= bin
BENCH_FLAGS ?=

.PHONY: bench

bench:
	@test "$$(id -u)" = 0 || { echo "make bench needs root (network namespaces)"; exit 1; }
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/announce ./cmd/announce
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/selfannounce-bench ./cmd/selfannounce-bench
	$(BIN)/selfannounce-bench --announce $(BIN)/announce --doc docs/performance.md $(BENCH_FLAGS)
