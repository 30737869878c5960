// Package memkv is the in-memory chanwatch backend and the MVCC state
// machine shared with kv/raftkv.
//
// Store is a deterministic MVCC key-value state: one global revision, per-key
// create/mod revisions and versions, leases without deadlines, an event
// history since the compact revision, and watches that catch up from that
// history without ever blocking a writer. raftkv applies its log to a Store
// on every replica, so the Store must not read a clock, depend on map
// iteration order, or do anything that two replicas fed the same calls could
// do differently.
//
// KV wraps a Store into a kv.Backend for tests of higher layers: lease
// deadlines on a clockwork.Clock (a fake clock makes TTLs instant and
// deterministic), several handles on one store (NewClient) to stand for
// several processes, and per-handle fault hooks (FailNext, Hang,
// DropWatches) to stand for a failing server. memkv keeps everything in
// memory and persists nothing; it is not a production store, and it must not
// grow a second copy of the MVCC logic elsewhere in chanwatch.
package memkv
