# ftrun — see README.md. Targets that run CRIU need root.
GO      ?= go
BIN     := bin/ftrun
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
PKGS_UNIT := $(shell $(GO) list ./... | grep -v /integration)

.PHONY: all build setup demo test unit root-test integration daemons matrix lint bench bench-daemons fuzz soak clean

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
	$(GO) vet -tags matrix ./integration/
	@# CRIU's other architectures: ftrun builds there too, with full dumps only.
	for arch in arm64 ppc64le s390x; do GOARCH=$$arch $(GO) vet ./... || exit 1; done

unit:
	$(GO) test -race -count=1 $(PKGS_UNIT)

# Root-only tests inside the packages run as part of unit when root; this target makes
# the requirement explicit.
root-test:
	@[ "$$(id -u)" = 0 ] || { echo "root-test: run as root"; exit 1; }
	$(GO) test -race -count=1 $(PKGS_UNIT)

SHELL := /bin/bash

integration: build
	$(GO) test -race -count=1 -timeout 60m -v ./integration/ 2>&1 | tee /tmp/ftrun-integration.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic|\s+[a-z_]+_test.go)' ; exit $${PIPESTATUS[0]}

# The long variants: SOAK_FAULTS random faults (kill -9 of ftrun, the program, CRIU
# mid-dump and mid-restore, the standby mid-commit; disk full, read-only state dir, link
# cut, host death, partition and heal), each followed by the acknowledged-writes check,
# the ping-pong failover for 10 cycles and 20 host kills under a writing client.
# `make integration` runs every fault kind once, two ping-pong cycles and 6 host kills.
SOAK_FAULTS ?= 60
soak: setup build
	FTRUN_SOAK=1 FTRUN_SOAK_FAULTS=$(SOAK_FAULTS) $(GO) test -count=1 -timeout 3h -v -run '^(TestFaultSoak|TestPingPongFailover|TestOutputCommitFailover)$$' ./integration/ 2>&1 | tee /tmp/ftrun-soak.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic|\|)|_test.go' ; exit $${PIPESTATUS[0]}

# The real-daemon matrix alone (also part of integration).
daemons: build
	$(GO) test -race -count=1 -timeout 20m -v -run 'TestDaemon' ./integration/

# The real-daemon matrix with its slow-to-install part: a JVM (scripts/setup --jvm
# installs a JDK; the JVM tests build only with the matrix tag, so `make test` needs none).
matrix: build
	./scripts/setup --jvm
	$(GO) test -tags matrix -race -count=1 -timeout 30m -v -run 'TestDaemon' ./integration/

# The README's real-daemon table: kill -9 -> first correct answer, ftrun vs a plain restart.
# BENCH_TAGS=matrix adds the JVM's row (and installs a JDK); BENCH_DAEMONS picks rows,
# e.g. make bench-daemons BENCH_TAGS=matrix BENCH_DAEMONS='/(sqlite|jvm)'.
bench-daemons: setup
	$(if $(filter matrix,$(BENCH_TAGS)),./scripts/setup --jvm)
	$(GO) test -tags '$(BENCH_TAGS)' -run '^$$' -bench 'BenchmarkDaemonRecovery$(BENCH_DAEMONS)' -benchtime 3x -timeout 30m ./integration/

# Benchmarks: every figure next to its baseline measured in the same run, written to a
# report folder (Markdown, SVG plots, results.json). BENCH_FLAGS=--quick for the short run.
bench: setup build
	./$(BIN) bench $(BENCH_FLAGS)

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzReader -fuzztime 30s ./transport/frame/
	$(GO) test -run '^$$' -fuzz FuzzPayloads -fuzztime 30s ./transport/frame/
	$(GO) test -run '^$$' -fuzz FuzzApply -fuzztime 30s ./checkpoint/delta/

clean:
	rm -rf bin
