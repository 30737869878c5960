GO ?= go
PKGS := ./...
# Extra flags for go test, e.g. make test TESTFLAGS='-run TestKV -v'.
TESTFLAGS ?=

.PHONY: all build test test-load fmt-check vet lint promtool-test etcd bench bench-scale chaos clean

all: build

build:
	$(GO) build $(PKGS)

# The README's test command: format check, vet, the alert rules' unit
# tests, race-enabled tests.
test: fmt-check vet promtool-test
	$(GO) test -race -count=1 -timeout 9m $(TESTFLAGS) $(PKGS)

# make test on a loaded machine: two busy loops (yes >/dev/null) share the
# cores with it, as other work would on a CI box. Liveness waits must still
# pass; the loops are killed afterwards, also when the tests fail or are
# interrupted, and make test's exit status is kept.
test-load:
	@yes >/dev/null & y1=$$!; yes >/dev/null & y2=$$!; \
	trap 'kill $$y1 $$y2 2>/dev/null' EXIT; trap 'exit 130' INT TERM HUP PIPE; \
	echo "test-load: busy loops $$y1 $$y2 running beside make test"; \
	$(MAKE) test; status=$$?; \
	echo "test-load: make test exited $$status"; exit $$status

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

lint: fmt-check vet

# The Prometheus rules of deploy/prometheus, checked and unit-tested by
# promtool (Debian: apt-get install prometheus; .ci/run installs it).
promtool-test:
	@command -v promtool >/dev/null || { echo "promtool not found: apt-get install -y prometheus"; exit 1; }
	promtool check rules deploy/prometheus/rules.yml
	cd deploy/prometheus && promtool test rules rules_test.yml

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
	$(GO) run -tags raft ./cmd/chanwatch bench $(BENCHFLAGS)

# B12, the scale run of docs/BENCHMARKS.md: 1,000,000 channels on 10,000
# simulated nodes, one embedded etcd, the real coordinator (about 5
# minutes on 2 cores; not part of make bench). BENCHFLAGS as for bench.
bench-scale:
	$(GO) run ./cmd/chanwatch bench --run B12 --timeout 30m -v $(BENCHFLAGS)

clean:
	rm -rf bin
