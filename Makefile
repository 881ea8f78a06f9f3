# ftrun — see README.md. Targets that run CRIU need root.
GO      ?= go
BIN     := bin/ftrun
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
PKGS_UNIT := $(shell $(GO) list ./... | grep -v /integration)

.PHONY: all build setup demo test unit root-test integration lint bench fuzz clean soak

all: build

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/ftrun

# Installs CRIU (from source), iptables, ruby, redis, memcached, etcd: idempotent.
setup:
	./scripts/setup

# The main job: protect a Ruby counter and survive injected failures.
demo: setup build
	./$(BIN) check
	./$(BIN) demo

# The whole suite: lint, unit tests with the race detector, root and integration tests.
test: setup lint unit integration

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

unit:
	$(GO) test -race -count=1 $(PKGS_UNIT)

# Root-only tests inside the packages run as part of unit when root; this target makes
# the requirement explicit.
root-test:
	@[ "$$(id -u)" = 0 ] || { echo "root-test: run as root"; exit 1; }
	$(GO) test -race -count=1 $(PKGS_UNIT)

SHELL := /bin/bash

integration: build
	$(GO) test -race -count=1 -timeout 30m -v ./integration/ 2>&1 | tee /tmp/ftrun-integration.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic|\s+[a-z_]+_test.go)' ; exit $${PIPESTATUS[0]}

# The long variants: the ping-pong failover for 10 cycles.
soak: build
	FTRUN_SOAK=1 $(GO) test -race -count=1 -timeout 30m -v -run 'TestPingPongFailover' ./integration/ 2>&1 | tee /tmp/ftrun-soak.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic|\s+[a-z_]+_test.go)' ; exit $${PIPESTATUS[0]}

# Benchmarks: every figure next to its baseline measured in the same run, written to a
# report folder (Markdown, SVG plots, results.json). BENCH_FLAGS=--quick for the short run.
bench: setup build
	./$(BIN) bench $(BENCH_FLAGS)

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzReader -fuzztime 30s ./transport/frame/
	$(GO) test -run '^$$' -fuzz FuzzPayloads -fuzztime 30s ./transport/frame/

clean:
	rm -rf bin
