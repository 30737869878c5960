GO ?= go
PKGS := ./...
# Extra flags for go test, e.g. make test TESTFLAGS='-run TestKV -v'.
TESTFLAGS ?=

.PHONY: all build test fmt-check vet lint etcd bench chaos clean

all: build

build:
	$(GO) build $(PKGS)

# The README's test command: format check, vet, race-enabled tests.
test: fmt-check vet
	$(GO) test -race -count=1 -timeout 9m $(TESTFLAGS) $(PKGS)

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

lint: fmt-check vet

# A real etcd binary built from our own module graph, for tests that run
# etcd as separate processes.
etcd: bin/etcd

bin/etcd: go.mod go.sum
	$(GO) build -o bin/etcd go.etcd.io/etcd/server/v3

# The fault tests' long versions (chaos build tag): three-member clusters of
# real etcd processes, minutes of seeded faults per test, one FIGURE line per
# test. CHANWATCH_SEED repeats a run; CHANWATCH_REPORT_DIR keeps the history
# of a failed one. The short versions run in `make test`.
chaos: bin/etcd
	$(GO) test -tags chaos -race -count=1 -timeout 20m -v ./chaos/...

# The benchmarks of docs/BENCHMARKS.md; flags via BENCHFLAGS, e.g.
# make bench BENCHFLAGS='--quick --json /tmp/b.json'.
bench: bin/etcd
	$(GO) run ./cmd/chanwatch bench $(BENCHFLAGS)

clean:
	rm -rf bin
