// Package nodewatch is the node side of MEP 7: it registers a node, watches
// the node's own assignment prefix (channel/<nodeID>/), runs the user's
// Handler for each channel and reports the outcome back into the assignment
// key, so that the coordinator (package channelmgr) can move channels
// between nodes without ever talking to a node directly.
//
// For each channel the node runs the protocol described in docs/PROTOCOL.md
// of the chanwatch repository:
//
//   - PUT ToWatch: Handler.Watch with the assignment's fencing token
//     (AssignRevision = the key's mod revision of that ToWatch put); Progress
//     heartbeats while it runs, only when the handler reports progress
//     (ReportProgress), at most one per progress interval; then, only if the
//     key is unchanged, Watched or WatchFailure. If the coordinator moved on meanwhile, the channel is
//     released and nothing is written.
//   - PUT ToRelease: cancel, Handler.Release (whose progress reports bump
//     Progress on the ToRelease key, re-arming the release timeout), then
//     Released or ReleaseFailure. DELETE: release locally, write nothing.
//   - Session loss: when the session can no longer prove its lease alive
//     (session.ErrFenced, also checked against a clock that counts through
//     a system suspend), the lease is gone, or the node's session key is
//     deleted, replaced or marked evicted by the coordinator
//     (session.ErrEvicted), every channel's context is cancelled and every
//     Release runs at once, before the lease can have expired on the
//     server; then the node registers again under a new ID.
//   - A channel whose Release failed stays held, across re-registrations
//     (Node.Unreleased): Release is retried before the node registers again
//     and before any new Watch of that channel, and Watch is not called
//     until a Release succeeded (the node reports WatchFailure instead).
//   - Every write the node makes (acks, failure reports, Progress
//     heartbeats) is a compare-and-swap on the key's mod revision; an
//     unknown outcome is resolved by reading the key back, and the node's
//     own landed write is recorded as seen, so its watch event is never
//     taken for a new assignment.
//   - A key created before the node's session key (an earlier holder of the
//     node ID left it) is not the node's: it is skipped, and the coordinator
//     moves it.
//
// Each channel has its own worker, so a slow channel never blocks another,
// and the dispatcher never waits on a worker. Broken watches resume from the
// last revision; compacted ones re-list and reconcile. Corrupt values and
// foreign keys under the prefix are logged and skipped.
//
// nodewatch never assigns channels, never writes another node's keys and
// never writes ToWatch or ToRelease for a new assignment; it only reports on
// the keys the coordinator gave it. It does not retry a failed Watch by
// itself: the coordinator decides where a failed channel goes. It imports
// kv, meta and session only, never a backend.
package nodewatch
