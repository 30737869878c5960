// Package etcdembed runs a real, single-member etcd server inside the current
// process (go.etcd.io/etcd/server/v3/embed) on loopback, for tests, for
// `chanwatch demo` and for benchmarks.
//
// Start picks free client and peer ports at run time (retrying if another
// process takes a port between the pick and the bind), waits until the
// member is ready to serve, and logs through a *zap.Logger (a no-op logger by
// default, so test output stays clean). Options tune the raft timers (and so
// etcd's minimum lease TTL), the backend quota and the server's --max-txn-ops,
// which a client-side backend (kv/etcdkv) must be told about. NewForTest
// wraps Start for tests: a temp dir, fast timers, cleanup on test end.
//
// This package must not be used to run production etcd: it has no TLS, no
// auth and no multi-member support (a later option can add them through
// WithEmbedConfig), and NewForTest turns fsync off. Multi-member and
// kill/restart scenarios use the real etcd binary built by `make etcd`.
package etcdembed
