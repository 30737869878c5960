package kv

import (
	"context"
	"time"
)

// KV reads and writes keys. The contract is in the package doc.
type KV interface {
	// Get returns key and the revision the read was served at. It fails with
	// ErrKeyNotFound (with that revision still returned) when key is missing,
	// ErrInvalidKey for an invalid key.
	Get(ctx context.Context, key string) (KeyValue, int64, error)
	// List returns every key with the given prefix, sorted by key, all read
	// at one revision, which it returns. An empty prefix lists the root.
	List(ctx context.Context, prefix string) ([]KeyValue, int64, error)
	// Txn applies t atomically. Errors: ErrTxnTooLarge (more than MaxTxnOps
	// entries in a list, or TxnBytes(t) > MaxTxnBytes), ErrInvalidTxn,
	// ErrInvalidKey, ErrLeaseNotFound (nothing written); ErrUnknownOutcome
	// when the write may or may not have applied.
	Txn(ctx context.Context, t Txn) (TxnResponse, error)
	// MaxTxnOps is the largest number of entries in any one of a Txn's If,
	// Then and Else lists. Callers batch under it.
	MaxTxnOps() int
	// MaxTxnBytes is the largest TxnBytes of a Txn the backend accepts, in
	// bytes (keys, values and compare values of all three lists, plus
	// TxnEntryOverhead per entry). A larger Txn fails with ErrTxnTooLarge
	// and writes nothing. It is constant for the life of the backend and
	// always > 0. Callers batch under it as under MaxTxnOps.
	MaxTxnBytes() int
}

// Pager is implemented by backends whose List reads in pages, so that a
// caller with work to do per key (a coordinator decoding a root of 200,000
// keys) can do it while the next page is read. It is optional: callers
// fall back to List.
type Pager interface {
	// ListPages reads what List(ctx, prefix) reads and calls fn with each
	// page, in key order, from one goroutine, while the next page is
	// being read. Every page of an attempt is read at the revision fn is
	// given. When the store compacts that revision before the last page,
	// ListPages starts over at a newer one, as List does: fn then gets
	// restart true with that attempt's first page and must drop what it
	// was given before. It returns the revision of the attempt that
	// finished. An error from fn ends the read and is returned as it is;
	// after any error, what fn was given is incomplete. The pages are
	// fn's to keep. On cancel it returns ctx's error and calls fn no more.
	ListPages(ctx context.Context, prefix string, fn func(page []KeyValue, rev int64, restart bool) error) (int64, error)
}

// ListPages reads prefix from b page by page when b is a Pager (see
// Pager.ListPages), and otherwise calls List and hands its result to fn as
// one page.
func ListPages(ctx context.Context, b KV, prefix string, fn func(page []KeyValue, rev int64, restart bool) error) (int64, error) {
	if p, ok := b.(Pager); ok {
		return p.ListPages(ctx, prefix, fn)
	}
	kvs, rev, err := b.List(ctx, prefix)
	if err != nil {
		return 0, err
	}
	if err := fn(kvs, rev, false); err != nil {
		return 0, err
	}
	return rev, nil
}

// Watcher watches a prefix.
type Watcher interface {
	// Watch delivers the events on keys with prefix from fromRev on; see
	// the package doc for ordering, duplicates, termination and cancel. The
	// channel is closed when ctx is done; a terminal error (ErrCompacted
	// with a *CompactedError, ErrClosed, ErrInvalidKey) comes as a last
	// response before the close.
	Watch(ctx context.Context, prefix string, fromRev int64) WatchChan
}

// Leaser manages leases.
type Leaser interface {
	// Grant creates a lease whose TTL is at least ttl. ErrInvalidTTL for
	// ttl <= 0.
	Grant(ctx context.Context, ttl time.Duration) (LeaseID, error)
	// KeepAliveOnce renews the lease to its full TTL and returns that TTL.
	// ErrLeaseNotFound when the lease is gone.
	KeepAliveOnce(ctx context.Context, id LeaseID) (time.Duration, error)
	// Revoke deletes the lease and, in one revision, every key attached to
	// it. ErrLeaseNotFound when the lease is gone.
	Revoke(ctx context.Context, id LeaseID) error
	// TimeToLive returns the time left before the lease expires.
	// ErrLeaseNotFound when the lease is gone.
	TimeToLive(ctx context.Context, id LeaseID) (time.Duration, error)
}

// Compactor discards history at or below a revision. Watches and reads
// that need it afterwards fail with ErrCompacted.
type Compactor interface {
	// Compact discards history up to and including rev. ErrFutureRev when
	// rev is above the current revision; compacting at or below the current
	// compact revision fails with a *CompactedError.
	Compact(ctx context.Context, rev int64) error
}

// Backend is everything chanwatch needs from a store.
type Backend interface {
	KV
	Watcher
	Leaser
	Compactor
	// Close releases the backend's resources; calls after Close fail with
	// ErrClosed and open watches end with ErrClosed. It does not close a
	// client the caller passed in.
	Close() error
}

// Put writes key=value in a one-op Txn and returns its revision.
func Put(ctx context.Context, k KV, key string, value []byte) (int64, error) {
	r, err := k.Txn(ctx, Txn{Then: []Op{OpPut(key, value)}})
	return r.Revision, err
}

// Delete deletes key in a one-op Txn and returns the revision after it and
// whether a key was removed.
func Delete(ctx context.Context, k KV, key string) (int64, bool, error) {
	r, err := k.Txn(ctx, Txn{Then: []Op{OpDelete(key)}})
	if err != nil {
		return 0, false, err
	}
	return r.Revision, len(r.Responses) == 1 && r.Responses[0].Deleted == 1, nil
}

// TxnEntryOverhead is what TxnBytes counts for each compare and op on top
// of its key and value: an allowance for the engine's framing (etcd's
// protobuf tags, lengths, lease and revision fields need less).
const TxnEntryOverhead = 32

// TxnBytes is the size of t in bytes as the contract counts it against
// MaxTxnBytes: the key and value of every compare and op in If, Then and
// Else (both branches, whichever would run), plus TxnEntryOverhead per
// entry. Keys count as the caller wrote them, without the backend's root.
func TxnBytes(t Txn) int {
	n := 0
	for _, c := range t.If {
		n += TxnEntryOverhead + len(c.Key) + len(c.Value)
	}
	for _, branch := range [][]Op{t.Then, t.Else} {
		for _, o := range branch {
			n += TxnEntryOverhead + len(o.Key) + len(o.Value)
		}
	}
	return n
}

// ValidateTxnBytes returns ErrTxnTooLarge (wrapped, with both sizes) when
// TxnBytes(t) > maxBytes. Every backend calls it, with its MaxTxnBytes,
// before touching its engine, next to ValidateTxn.
func ValidateTxnBytes(t Txn, maxBytes int) error {
	if n := TxnBytes(t); n > maxBytes {
		return wrapf(ErrTxnTooLarge, "%d bytes, max %d", n, maxBytes)
	}
	return nil
}

// ValidateTxn checks a Txn against the contract's static rules (key
// validity, branch sizes, one write per key per branch) so that every
// backend rejects the same requests with the same errors before touching
// its engine.
func ValidateTxn(t Txn, maxOps int) error {
	if len(t.If) > maxOps || len(t.Then) > maxOps || len(t.Else) > maxOps {
		return wrapf(ErrTxnTooLarge, "if=%d then=%d else=%d, max %d", len(t.If), len(t.Then), len(t.Else), maxOps)
	}
	for _, c := range t.If {
		if err := ValidateKey(c.Key); err != nil {
			return err
		}
		if c.Target < TargetValue || c.Target > TargetModRevision || c.Result < Equal || c.Result > Greater {
			return wrapf(ErrInvalidTxn, "malformed compare %v", c)
		}
	}
	for _, branch := range [][]Op{t.Then, t.Else} {
		var seen map[string]struct{}
		for _, o := range branch {
			if err := ValidateKey(o.Key); err != nil {
				return err
			}
			if o.Type < OpTypePut || o.Type > OpTypeGet {
				return wrapf(ErrInvalidTxn, "unknown op type %v on %q", o.Type, o.Key)
			}
			if !o.IsWrite() {
				continue
			}
			if seen == nil {
				seen = make(map[string]struct{}, len(branch))
			}
			if _, dup := seen[o.Key]; dup {
				return wrapf(ErrInvalidTxn, "key %q written twice in one branch", o.Key)
			}
			seen[o.Key] = struct{}{}
		}
	}
	return nil
}
