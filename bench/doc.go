// Package bench measures how fast chanwatch places and moves channels, how
// much it writes to etcd, and how much memory the coordinator holds, each
// against a baseline measured in the same run on the same server: these
// machines are noisy, so every figure is a ratio.
//
// The scenarios (B1 assign, B2 failover, B3 recovery, B4 backends, B5
// memory, B6 growth, B7 writes, B8 handoff, B9 drain, B10 rolling restart;
// B11 balance runs on the policy alone and ignores the Env) are plain
// functions over an Env (an
// embedded etcd, or an external one by its endpoints) that return a Result;
// docs/BENCHMARKS.md describes each one, its baseline and its goal. Run runs
// a chosen set at a given scale and WriteJSON/WriteTable print the results;
// NewCommand wraps that as the `chanwatch bench` subcommand; the package's
// Benchmark functions run the same code under `go test -bench`, so
// benchstat can compare commits.
//
// etcd writes are counted as revision deltas of the store: each write txn
// (and each lease revoke that deletes keys) adds exactly one, so the count
// is exact as long as nothing else writes to the server during a
// measurement (true for the embedded server; with --endpoints, keep other
// writers away).
//
// bench only drives the public APIs of channelmgr, nodewatch, session and
// the kv backends, and writes its fixtures through package meta; it must not
// reach into those packages, and it must never run against an etcd that
// holds data it does not own: each scenario works under a fresh root and
// deletes it afterwards, and compaction (cluster-wide in etcd) is only done
// on the embedded server.
package bench
