package raftkv

import (
	"context"

	"github.com/chanwatch/chanwatch/kv"
)

// Watch delivers the events on keys with prefix from fromRev on, from this
// node's own store: a watch on a follower sees the same events, in the same
// revisions, as one on the leader, as the follower applies them. Watch
// first makes a linearizable read (as Get), so the watch starts from a
// state that includes every write and compaction acknowledged before the
// call; fromRev <= 0 means after that read's revision. When no leader
// answers within the request timeout the watch ends with
// kv.ErrUnavailable. See kv.Watcher for ordering and termination; Close
// ends the watch with kv.ErrClosed; a snapshot installed on a lagging node
// ends watches that would otherwise skip events with a *kv.CompactedError.
func (n *Node) Watch(ctx context.Context, prefix string, fromRev int64) kv.WatchChan {
	if err := kv.ValidatePrefix(prefix); err != nil {
		return failedWatch(err)
	}
	if n.closed() {
		return failedWatch(kv.ErrClosed)
	}
	// Start from a linearizable point, so that a watch sees every write
	// (and compaction) acknowledged before it was called, on any node.
	if err := n.linearize(ctx); err != nil {
		if ctx.Err() != nil {
			// Cancelled: the channel closes without an error response.
			ch := make(chan kv.WatchResponse)
			close(ch)
			return ch
		}
		return failedWatch(err)
	}
	if fromRev <= 0 {
		fromRev = n.fsm.store.Rev() + 1
	}
	return n.fsm.store.Watch(ctx, prefix, fromRev)
}

func failedWatch(err error) kv.WatchChan {
	ch := make(chan kv.WatchResponse, 1)
	ch <- kv.WatchResponse{Err: err}
	close(ch)
	return ch
}
