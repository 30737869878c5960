package raftkv

import (
	"context"

	"github.com/chanwatch/chanwatch/kv"
)

// Watch delivers the events on keys with prefix from fromRev on, from this
// node's own store: a watch on a follower sees the same events, in the same
// revisions, as one on the leader, as the follower applies them. fromRev <= 0
// means after the revision of a linearizable read made now. See
// kv.Watcher for ordering and termination; Close ends the watch with
// kv.ErrClosed; a snapshot installed on a lagging node ends watches that
// would otherwise skip events with a *kv.CompactedError.
func (n *Node) Watch(ctx context.Context, prefix string, fromRev int64) kv.WatchChan {
	if err := kv.ValidatePrefix(prefix); err != nil {
		return failedWatch(err)
	}
	if n.closed() {
		return failedWatch(kv.ErrClosed)
	}
	if fromRev <= 0 {
		if err := n.linearize(ctx); err != nil {
			if ctx.Err() != nil {
				// Cancelled: the channel closes without an error response.
				ch := make(chan kv.WatchResponse)
				close(ch)
				return ch
			}
			return failedWatch(err)
		}
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
