// Package kv is the small storage contract every chanwatch component is
// written against, and every backend (kv/memkv, kv/etcdkv, kv/raftkv) keeps.
//
// The contract is etcd v3's, because etcd is the production backend:
//
// Revisions. The store has one global revision. Every successful Txn that
// writes at least one key (and every lease expiry or revoke that deletes keys)
// advances it by exactly one; all writes of that Txn carry the same revision.
// A Txn that writes nothing (read-only, or a failed compare with a read-only
// Else branch) does not advance it. Each key records the revision that created
// it (CreateRevision), last modified it (ModRevision) and how many times it was
// written since creation (Version). A fresh store is at revision 1.
//
// Keys. Keys are non-empty strings that do not start with '/'. A backend
// confines every key under its own root; two backends on different roots can
// never see each other's keys. Prefix operations match raw string prefixes
// within the root: callers that want directory semantics end their prefix with
// '/'. A nil value and an empty value are the same: a key that exists with a
// zero-length value. Invalid keys fail with ErrInvalidKey.
//
// Txn. Txn(If, Then, Else) is atomic: if every compare holds, Then runs,
// otherwise Else runs; Succeeded says which. Compares on a missing key see
// Version, CreateRevision and ModRevision 0, and a Value compare on a missing
// key is always false (there is no value to compare, as in etcd). Each of If,
// Then and Else may hold at most MaxTxnOps entries, otherwise the Txn fails with
// ErrTxnTooLarge and writes nothing.
//
// Sizes. A Txn may be at most MaxTxnBytes bytes as TxnBytes counts them: the
// keys and values of every compare and op in If, Then and Else (the branch
// that does not run counts too), plus TxnEntryOverhead per entry. A larger
// Txn fails with ErrTxnTooLarge and writes nothing, before the backend sends
// or applies anything; every backend checks it with ValidateTxnBytes, and
// reports a MaxTxnBytes its engine (etcd's --max-request-bytes, the gRPC
// client's send limit, raftkv's log) accepts for any Txn within it, root
// prefix and framing included. A refusal by the engine itself is mapped to
// ErrTxnTooLarge too. ErrTxnTooLarge is never an unknown outcome: the same Txn
// fails the same way again, so a caller splits it or gives up; it never
// resends it unchanged. A value therefore can never be larger than
// MaxTxnBytes less its key and overhead, and whoever writes values of
// unbounded size (error texts, payloads) bounds them below that.
//
// A branch that writes the same key twice
// fails with ErrInvalidTxn. A put with a lease that does not exist fails with
// ErrLeaseNotFound and writes nothing.
//
// Watch. Watch(prefix, fromRev) delivers every event on keys with that prefix
// whose revision is >= fromRev (fromRev <= 0 means "after the current
// revision"), in revision order, each exactly once, never skipping one. The
// events of one Txn arrive together in one WatchResponse, in the order the
// Txn wrote them. If fromRev is at or below the store's compaction revision
// the watch ends with a *CompactedError (errors.Is(err, ErrCompacted)) that
// carries the compact revision; the caller re-lists and watches again from
// the list revision + 1. A slow consumer never blocks writers: a backend
// buffers or catches up from history, and if the history it needs has been
// compacted meanwhile, the watch ends with ErrCompacted. A watch ends when
// its context is cancelled (the channel is closed, with no error response),
// when the backend is closed (a final response with ErrClosed), or on a
// terminal error (a final response with Err set). After the final response
// the channel is closed. Resuming from the last seen revision + 1 misses
// nothing and duplicates nothing.
//
// Leases. Grant creates a lease with a TTL of at least the requested one (a
// backend may raise it to its minimum; etcd's is 2s by default) and returns its
// ID. KeepAliveOnce renews it to its full TTL. Revoke deletes it and every key
// attached to it at once, in one revision. When a lease is not renewed within
// its TTL it expires and its keys are deleted with ordinary DELETE events.
// Operations on an unknown or expired lease fail with ErrLeaseNotFound. A TTL
// <= 0 fails with ErrInvalidTTL.
//
// Cancellation. Every call returns promptly once its context is done, with an
// error that wraps ctx.Err(). A write whose context ends after it was sent may
// or may not have been applied: such errors also wrap ErrUnknownOutcome when the
// backend cannot tell, so callers retry idempotently (with compares).
//
// Errors. Every backend maps its engine's errors onto the sentinel values in
// this package, so errors.Is works the same on every backend. Calls on a
// closed backend fail with ErrClosed.
//
// Optional interfaces. A backend may also implement Pager (a List handed
// over page by page while the next page is read; etcdkv does); callers use
// it through ListPages, which falls back to List for backends that do not.
package kv
