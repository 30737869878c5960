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

// Preparer is an optional capability of a Handler: warm handoff. A node
// whose Handler also implements Preparer advertises it in its session key
// (meta.NodeSession.Prepare), and the coordinator may then, before a
// planned move (a balance move or a drain) of a channel onto this node,
// ask it to prepare the channel: load its state, catch up on its log,
// subscribe without consuming. Only once the node answered Prepared does the current
// owner get ToRelease; on its Released, this node gets the usual ToWatch,
// and Watch can be a fast activation of what Prepare built. Handlers that
// do not implement Preparer behave exactly as before: their channels move
// cold.
//
// Prepare must never own the channel: it runs while another node still
// runs it, has no fencing token (info.AssignRevision is 0), and must have
// no side effect that needs one (no writes to the channel's storage, no
// acknowledged consumption). Ownership starts with Watch, as always.
//
// Calls, for one channel:
//
//   - Prepare is called once per request (a prepare/<node>/<channel> key
//     with state ToPrepare). nil answers Prepared; an error answers
//     PrepareFailure with the error's text, and the coordinator leaves the
//     channel where it is, or moves it cold if it is being drained (a
//     failed prepare also counts against this node's health, like a failed
//     Watch).
//   - Prepare's ctx is cancelled when the request is withdrawn (the move
//     was abandoned, timed out, the channel went elsewhere, the coordinator
//     changed its mind), when the node's session ends, when the node stops,
//     and when a Watch of the channel is about to start. Prepare must
//     return promptly once it is; the node waits for it.
//   - Watch of the channel starts only after Prepare returned. It may
//     follow a Prepare that failed, was cancelled, or never finished, or
//     come with no Prepare at all (failover is always cold): Watch must not
//     rely on Prepare having completed, only use what it finds.
//   - Unprepare(ctx, channel) frees what Prepare built when the
//     preparation will not be used: called once after every Prepare whose
//     request ended without a Watch of the channel taking the preparation
//     over, after Prepare returned (also when the channel was assigned to
//     this node but its Watch was not called: an earlier Release of it
//     failed again, or the session was past its fence deadline). It is not
//     called when a Watch of the channel takes the preparation over (Watch,
//     then Release, own it from then on).
//     Unprepare is also called when the node's session ends or the node
//     stops while a preparation is held. Its ctx is not cancelled; its
//     error is logged only.
//   - Prepare, Unprepare and Watch/Release of one channel are never called
//     concurrently with each other by this node, with one exception: a
//     Release of an earlier assignment of the channel on this node may
//     still be running when a new Prepare starts.
//
// Progress and timeouts: the coordinator gives a preparation its watch
// timeout (channelmgr.WithWatchTimeout), re-armed by progress: report it
// with ReportProgress on Prepare's ctx, as for Watch. The attempt cap
// (WithMaxAttempt) applies too. A preparation that times out is withdrawn
// (its ctx cancelled, then Unprepare) and the channel stays where it ran
// (a drained one moves cold).
//
// A node that dies while preparing costs nothing but the preparation: the
// coordinator deletes the request and leaves the channel on its owner.
//
// Prepare's ctx carries NodeID and Assignment (the request's ChannelInfo,
// with no fencing token). A panic in Prepare or Unprepare is recovered and
// treated as an error.
type Preparer interface {
	// Prepare readies the channel described by info for a later Watch on
	// this node, without owning it.
	Prepare(ctx context.Context, info meta.ChannelInfo) error
	// Unprepare frees what Prepare built, when no Watch will use it.
	Unprepare(ctx context.Context, channel string) error
}
