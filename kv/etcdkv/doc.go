// Package etcdkv is the production kv.Backend: etcd v3 through
// go.etcd.io/etcd/client/v3.
//
// A KV takes a *clientv3.Client the caller already has (Milvus components
// share one client) and a root: every key lives under root+"/", so roots
// "a/1" and "a/12" never see each other's keys, and keys come back relative
// to the root. etcd's own semantics are the contract's, so most calls map
// one to one: Txn to an etcd Txn, Watch to a clientv3 watch (which resumes
// by itself after a reconnect, keeping its revision), leases to etcd leases.
// Where they differ this package bridges: List reads large prefixes at one
// pinned revision, by RangeStream on etcd 3.7 and later and in pages
// before; Watch from "now" reads the current revision first,
// so an event written after Watch returns is never missed; every engine
// error goes through one convertError onto the sentinels of package kv.
//
// What it must not do: close the caller's client (Close only ends this KV's
// calls and watches), touch keys outside its root, or send a Txn the
// contract forbids (ValidateTxn runs before any RPC). It cannot confine
// Compact to its root: compaction is cluster-wide in etcd, and discards
// history of every root and every other user of the cluster.
//
// Calls on an unreachable cluster: the client waits for a connection until
// the call's context ends, so give every call a deadline.
package etcdkv
