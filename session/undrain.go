package session

import (
	"context"
	"errors"
	"fmt"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
)

// Undrain puts node nodeID, marked stopping by an operator's Drain, back to
// serving, from any process: the coordinator places channels on it again
// (and the balance may move some to it). The write is a compare-and-swap on
// the session key's mod revision that keeps the key's lease, so it applies
// only to the same session (the same lease) that was read: a node that
// re-registered meanwhile has a new ID, and a lease that ended fails the
// write. It is idempotent: a serving node is left as it is.
//
// Errors: meta.ErrInvalidNodeID; ErrNodeNotFound when the node has no
// session key (unknown ID, or its lease is gone); ErrNodeEvicted when the
// coordinator evicted it; ErrNodeShuttingDown when it is stopping because
// its own process is shutting down (nodewatch.Node.Stop: it exits once
// drained, and must not be given channels); meta.ErrCorruptValue when the
// value does not decode; or the backend's error.
func Undrain(ctx context.Context, b kv.KV, nodeID int64) error {
	if err := meta.ValidateNodeID(nodeID); err != nil {
		return err
	}
	key := meta.NodeSessionKey(nodeID)
	for {
		cur, _, err := b.Get(ctx, key)
		if errors.Is(err, kv.ErrKeyNotFound) {
			return fmt.Errorf("%w: node %d", ErrNodeNotFound, nodeID)
		}
		if err != nil {
			return fmt.Errorf("session: undrain node %d: %w", nodeID, err)
		}
		info, err := meta.DecodeNodeSession(key, cur.Value)
		if err != nil {
			return err
		}
		switch {
		case info.State == meta.NodeServing:
			return nil
		case info.State == meta.NodeEvicted:
			return fmt.Errorf("%w: node %d", ErrNodeEvicted, nodeID)
		case info.StopReason == meta.StopShutdown:
			return fmt.Errorf("%w: node %d is stopping to exit, not drained by an operator", ErrNodeShuttingDown, nodeID)
		}
		info.State, info.StopReason = meta.NodeServing, ""
		val, err := meta.EncodeNodeSession(info)
		if err != nil {
			return err
		}
		resp, err := b.Txn(ctx, kv.Txn{
			If:   []kv.Cmp{kv.CmpModRevision(key, kv.Equal, cur.ModRevision)},
			Then: []kv.Op{kv.OpPutLease(key, val, cur.Lease)},
		})
		if errors.Is(err, kv.ErrLeaseNotFound) {
			return fmt.Errorf("%w: node %d: %w", ErrNodeNotFound, nodeID, err)
		}
		if err != nil {
			return fmt.Errorf("session: undrain node %d: %w", nodeID, err)
		}
		if resp.Succeeded {
			return nil
		}
		// Changed under us (a drain, the node's own stop, an eviction):
		// decide again on the new value.
	}
}
