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
// server (letting another node start the channel) one fence margin
// (WithFenceMargin, default TTL/5) after the node starts releasing, so cancelled Watches and the Releases
// must finish within that margin to keep the at-most-one-owner guarantee;
// beyond it, only the fencing token protects downstream state.
//
// Progress: a call that is slow, not stuck, says so with ReportProgress on
// the ctx it was given. Progress is whatever moves the call toward its end
// and would not happen if it were stuck: a segment loaded, a batch of the
// channel's log replayed, a flush chunk written. Do not report from a
// timer that runs whatever the work does; that hides a hang. The node
// turns reports into Progress heartbeats on the assignment key (at most one
// per WithProgressInterval, none without a report), and each heartbeat
// re-arms the coordinator's timeout. So:
//
//   - a Watch that runs longer than the coordinator's watch timeout
//     (channelmgr.WithWatchTimeout, default 30s) without reporting is timed
//     out: its ctx is cancelled and the channel goes to another node;
//   - a Release that runs longer than the release timeout
//     (channelmgr.WithReleaseTimeout) without reporting gets its node
//     evicted: every channel of the node moves;
//   - a heartbeat reaches the store up to one progress interval after the
//     report, so report at least every (timeout − progress interval);
//   - a report after the call returned, or on a ctx not from the node, is a
//     no-op; so is one past the attempt cap (WithMaxAttempt, default 10
//     min), where the node cancels the call's ctx whatever it reports.
//
// Both calls' ctx carry the node's ID (NodeID) and the assignment
// (Assignment): for Release, the ChannelInfo of the Watch it undoes, so
// that final writes can be stamped with its fencing token.
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
	// text (Release is called to clean up first). A Watch longer than the
	// coordinator's watch timeout must report progress (ReportProgress(ctx)).
	// Past the attempt cap its ctx is cancelled and it reports WatchFailure
	// whatever it returns.
	Watch(ctx context.Context, info meta.ChannelInfo) error

	// Release stops the channel and frees what Watch built. It is called
	// after every Watch, once that Watch's ctx is cancelled and Watch has
	// returned (again only if it failed), and must be idempotent. Its ctx is
	// not cancelled by the end of the assignment, only at the attempt cap.
	// nil reports Released when the coordinator asked for the release; an
	// error reports ReleaseFailure with the error's text. A Release longer
	// than the coordinator's release timeout (a flush) must report progress
	// (ReportProgress(ctx)), or its node is evicted. On session loss there
	// is no coordinator to report to: Release has the fence margin
	// (WithFenceMargin) to finish.
	Release(ctx context.Context, channel string) error
}
