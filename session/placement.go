package session

import (
	"context"
	"errors"
	"fmt"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
)

// SetCapacity rewrites the node's session value with capacity c, on its own
// lease and only while the key is this node's (same create revision, same
// lease, not evicted): a compare-and-swap retried while other fields
// change. Errors: meta.ErrInvalidPlacement, ErrNodeNotFound when the key is
// gone or no longer this incarnation's, or the backend's error.
func (n *Node) SetCapacity(ctx context.Context, c float64) error {
	if err := meta.ValidateCapacity(c); err != nil {
		return err
	}
	key := meta.NodeSessionKey(n.id)
	for {
		cur, _, err := n.b.Get(ctx, key)
		if errors.Is(err, kv.ErrKeyNotFound) {
			return fmt.Errorf("%w: node %d", ErrNodeNotFound, n.id)
		}
		if err != nil {
			return fmt.Errorf("session: set capacity of node %d: %w", n.id, err)
		}
		if cur.CreateRevision != n.createRev || cur.Lease != n.s.Lease() {
			return fmt.Errorf("%w: node %d: the session key is another incarnation's", ErrNodeNotFound, n.id)
		}
		info, err := meta.DecodeNodeSession(key, cur.Value)
		if err != nil {
			return err
		}
		if info.State == meta.NodeEvicted {
			return fmt.Errorf("%w: node %d is evicted", ErrNodeNotFound, n.id)
		}
		if info.Capacity == c {
			return nil
		}
		info.Capacity = c
		val, err := meta.EncodeNodeSession(info)
		if err != nil {
			return err
		}
		resp, err := n.b.Txn(ctx, kv.Txn{
			If:   []kv.Cmp{kv.CmpModRevision(key, kv.Equal, cur.ModRevision)},
			Then: []kv.Op{kv.OpPutLease(key, val, cur.Lease)},
		})
		if errors.Is(err, kv.ErrLeaseNotFound) {
			return fmt.Errorf("%w: node %d: %w", ErrNodeNotFound, n.id, err)
		}
		if err != nil {
			return fmt.Errorf("session: set capacity of node %d: %w", n.id, err)
		}
		if resp.Succeeded {
			return nil
		}
	}
}
