// Package chaos holds chanwatch's fault tests: the store's linearizability
// and watch guarantees under member kills, partitions and compaction, and
// the MEP 7 protocol's safety (no double ownership, a deposed coordinator
// cannot write, no channel lost, crash points in the coordinator) under node
// kills, partitions, process pauses, etcd member kills and coordinator
// failovers, plus TLS and authentication against a real etcd.
//
// Every test has a short version, run by `go test` (and `make test`) on
// every change, and a long one behind the `chaos` build tag (`make chaos`):
// the same code with more clients, more faults, and multi-member etcd
// clusters of real etcd processes (bin/etcd). Each test prints one figure
// line (see docs/RELIABILITY.md):
//
//	FIGURE <test>: faults=N violations=0 lost=0 skipped_or_dup=0 reconverge=X.XxTTL
//
// and, when it fails, writes its history (operations, watch events, fault
// timeline, porcupine's HTML view) under $CHANWATCH_REPORT_DIR (default: a
// directory in os.TempDir(), named in the test log).
//
// The package has no exported API: its code lives in _test.go files and in
// test-only binaries under chaos/internal. It must not be imported, must not
// change the packages it tests, and must not send traffic anywhere but
// loopback.
package chaos
