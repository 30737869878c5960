package raftkv

import (
	"context"

	"github.com/chanwatch/chanwatch/kv"
)

// Get returns key as of a linearizable read, served from this node's store
// once it has applied everything committed before the call (see the
// package doc). Errors: kv.ErrKeyNotFound (with the revision),
// kv.ErrInvalidKey, kv.ErrUnavailable without a leader, ctx's error,
// kv.ErrClosed.
func (n *Node) Get(ctx context.Context, key string) (kv.KeyValue, int64, error) {
	if err := kv.ValidateKey(key); err != nil {
		return kv.KeyValue{}, 0, err
	}
	if err := n.linearize(ctx); err != nil {
		return kv.KeyValue{}, 0, err
	}
	return n.fsm.store.Get(key)
}

// List returns the keys with prefix as of a linearizable read, with its
// revision. Errors as Get, without kv.ErrKeyNotFound.
func (n *Node) List(ctx context.Context, prefix string) ([]kv.KeyValue, int64, error) {
	if err := kv.ValidatePrefix(prefix); err != nil {
		return nil, 0, err
	}
	if err := n.linearize(ctx); err != nil {
		return nil, 0, err
	}
	kvs, rev := n.fsm.store.List(prefix)
	return kvs, rev, nil
}

// Txn applies t through the log, on the leader; a Txn with no write in
// either branch is served as a linearizable read instead. Errors:
// kv.ErrTxnTooLarge, kv.ErrInvalidTxn, kv.ErrInvalidKey,
// kv.ErrLeaseNotFound (nothing written); kv.ErrUnknownOutcome when the
// write was proposed but the leader was lost, the context ended or the
// node closed before it applied; kv.ErrUnavailable when no leader took it
// within the request timeout (not applied); ctx's error; kv.ErrClosed.
func (n *Node) Txn(ctx context.Context, t kv.Txn) (kv.TxnResponse, error) {
	if err := kv.ValidateTxn(t, n.o.maxTxnOps); err != nil {
		return kv.TxnResponse{}, err
	}
	if err := kv.ValidateTxnBytes(t, n.o.maxTxnBytes); err != nil {
		return kv.TxnResponse{}, err
	}
	if !writes(t) {
		if err := n.linearize(ctx); err != nil {
			return kv.TxnResponse{}, err
		}
		return n.fsm.store.Txn(t, n.o.maxTxnOps)
	}
	res, err := n.propose(ctx, command{Op: opTxn, Txn: &t})
	if err != nil {
		return kv.TxnResponse{}, err
	}
	return res.Txn, nil
}

func writes(t kv.Txn) bool {
	for _, branch := range [][]kv.Op{t.Then, t.Else} {
		for _, o := range branch {
			if o.IsWrite() {
				return true
			}
		}
	}
	return false
}

// MaxTxnOps returns the largest number of entries allowed in each of a
// Txn's If, Then and Else lists (WithMaxTxnOps, default 128).
func (n *Node) MaxTxnOps() int { return n.o.maxTxnOps }

// MaxTxnBytes returns the largest kv.TxnBytes of a Txn (WithMaxTxnBytes,
// default DefaultMaxTxnBytes).
func (n *Node) MaxTxnBytes() int { return n.o.maxTxnBytes }

// Compact discards history up to and including rev on every replica,
// through the log. Errors: kv.ErrFutureRev, a *kv.CompactedError when rev
// is at or below the compact revision; others as for Txn.
func (n *Node) Compact(ctx context.Context, rev int64) error {
	_, err := n.propose(ctx, command{Op: opCompact, Rev: rev})
	return err
}
