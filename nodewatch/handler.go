package nodewatch

import (
	"context"

	"github.com/chanwatch/chanwatch/meta"
)

// Handler is the user's code: it starts and stops one channel on this node
// (in Milvus, a DataNode's flowgraph for a vchannel).
//
// Concurrency: both methods may be called concurrently for different
// channels, never concurrently for the same channel. For one channel, calls
// alternate: Watch, then Release, then (for a later assignment) Watch again.
// A slow call delays only its own channel.
//
// Lifetime: every Watch is followed by a Release of that channel once the
// assignment ends, whatever Watch returned (after a failed Watch, before the
// failure is reported). Release is called again only after it failed (on
// the next ToRelease, deletion or Watch of that channel), so it must be
// idempotent; it is never called for a channel this Node did not watch.
//
// Both methods must return, and Watch promptly once its ctx is cancelled:
// the node waits for them. On session loss the lease may expire on the
// server (letting another node start the channel) one fence margin (TTL/5)
// after the node starts releasing, so cancelled Watches and the Releases
// must finish within that margin to keep the at-most-one-owner guarantee;
// beyond it, only the fencing token protects downstream state.
//
// A panic in either method is recovered and treated as an error.
type Handler interface {
	// Watch starts the channel described by info and returns once it runs
	// (the MEP's WatchChannel).
	//
	// ctx lives as long as the assignment: it is cancelled when the
	// coordinator asks for a release (ToRelease), when the assignment key is
	// deleted, when the node's session is lost (self-fence), when the node's
	// acknowledgement fails because the coordinator moved on, and when the
	// node stops. Background work that Watch starts should select on ctx.
	//
	// info.AssignRevision is the fencing token of this assignment: stamp
	// side effects (writes to storage, messages) with it, and reject any
	// with a smaller token; tokens of one channel only grow, so a paused
	// former owner is recognisably stale.
	//
	// nil reports Watched; an error reports WatchFailure with the error's
	// text (Release is called to clean up first).
	Watch(ctx context.Context, info meta.ChannelInfo) error

	// Release stops the channel and frees what Watch built. It is called
	// after every Watch, once that Watch's ctx is cancelled and Watch has
	// returned (again only if it failed), and must be idempotent. Its ctx is
	// not cancelled by the end of the assignment. nil reports Released when the coordinator asked
	// for the release; an error reports ReleaseFailure with the error's text.
	Release(ctx context.Context, channel string) error
}
