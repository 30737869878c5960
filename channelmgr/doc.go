// Package channelmgr is the coordinator side of MEP 7 (DataCoord's part of
// "Watch & Release channel via etcd") and the registry API.
//
// The registry API (Register, Deregister, Owner, Channels, Remaining,
// PauseBalance, ResumeBalance, Quarantined, Unquarantine) works from any process holding a kv.KV: it
// writes desired state under registry/ and control/, or reads assignments
// under channel/. It needs no leader.
//
// A Coordinator campaigns for leadership (session.Campaign) and, while it
// leads, drives every registered channel onto exactly one live node. It
// lists the whole root once, watches it from the list revision on, and folds
// the events into an in-memory view owned by one goroutine that makes every
// decision. Decisions become batched txns that carry the leader guard (so a
// deposed coordinator's writes fail) and compare the mod revision of every
// key they rewrite or delete (or that a key they create is missing). After a
// write, the coordinator does not act on the channels it touched until its
// watch has delivered the write, so it never decides on a stale view of its
// own writes.
//
// The rules, in order of importance:
//   - A channel leaves a live node only after that node answered Released:
//     the coordinator marks it ToRelease, waits for Released, then deletes
//     the old key and puts ToWatch on the new node in one txn. It never
//     reassigns away from a live node by force.
//   - A live node that does not release in time (ReleaseTimeout, or
//     ReleaseFailure) is evicted by a guarded write: its session key is
//     marked evicted (meta.NodeEvicted) in a txn that carries the leader
//     guard and a compare on the key, so a deposed coordinator's eviction
//     writes nothing. The node fences itself as soon as it sees the mark;
//     its lease is then revoked.
//   - A node that is evicted or whose session key vanishes for any reason
//     (lease expiry, an ambiguous revoke, a deposed leader's late revoke,
//     an operator's revoke, the store revoking leases on its own) is
//     treated as a dead node only one node TTL after the coordinator learned
//     that its lease is gone (a Revoke that returned, "not found" included,
//     retried until it answers): "the lease is gone" never means "the node
//     has stopped", and nothing a Revoke answers shortens the wait. A crash
//     therefore costs one lease TTL (until the key expires) plus one node
//     TTL before its channels run elsewhere.
//   - An assignment key created before its node's session key (smaller
//     create revision) was made for an earlier holder of the node ID: it is
//     a dead node's, and the node does not run it.
//   - A dead node's channels move in txns (delete old + put ToWatch on the
//     policy's node, or into channel/remaining/ when no node serves).
//   - A ToWatch that shows no change for WatchTimeout, or a WatchFailure, is
//     released, then placed again after a backoff, avoiding the failed node
//     while another exists.
//   - Balancing (a Policy's balance step, at most MaxMovesInFlight moves at
//     once) can be paused with PauseBalance; failover never pauses.
//   - Warm handoff: a balance move or a drain onto a node whose handler implements
//     nodewatch.Preparer (meta.NodeSession.Prepare) first writes
//     prepare/<node>/<channel> (ToPrepare); only on its Prepared answer is
//     the source marked ToRelease, and the txn that puts ToWatch on the
//     destination deletes the request. A request that fails, shows no
//     progress for WatchTimeout, or whose move can no longer complete warm
//     (destination gone or not serving, source gone, channel deregistered)
//     is deleted and the channel stays where it runs; a failure counts
//     against the destination's health; a drained channel then moves cold.
//     Failover is always cold.
//     The requests are the state: a new leader re-lists and continues.
//   - A node that keeps failing is quarantined (WithQuarantine): after
//     Watch failures or timeouts of several distinct channels with no
//     success in between, or a failed Release, it gets no placements and no
//     balance moves for a backoff that doubles each time; then it takes one
//     channel (a probe), and its first success makes it healthy. A node
//     that failed lately takes one channel at a time. Channels waiting out
//     a failure's backoff count in the load of the node they failed on. The
//     leader publishes each quarantine as control/quarantine/<id>
//     (Quarantined); deleting that key (Unquarantine) lifts it. Health only
//     decides where channels go, never whether one may leave a node.
//   - A channel's required labels (meta.ChannelSpec.Require) hold under
//     every policy: Place is offered only the nodes that carry them, and an
//     answer or balance move that breaks them is refused. A channel no
//     serving node may take waits in channel/remaining/ with the reason as
//     its LastError (and in the channels_unplaceable gauge) until one does.
//     Weighted places and balances by weight and capacity; LeastLoaded and
//     ConsistentHash count channels.
//
// Intent that must survive a coordinator restart lives in the ChannelInfo
// values (state, FailedNode, Attempts); everything in memory (timeouts,
// backoffs, move targets, eviction deadlines) is rebuilt conservatively by
// the next leader: a timeout restarts from when the new leader first sees
// the key, and channels of nodes that are already gone wait one node TTL
// after the new leader takes over, in case the old one had just evicted
// them. Within one term a timeout belongs to the key's mod revision and
// survives watch resumes and re-lists: it does not fire while the watch is
// down, and the outage is credited back, at most one timeout in all, so a
// flapping watch cannot postpone an eviction forever.
//
// Wiring it into Milvus: DataCoord calls Register for each vchannel of a new
// collection (meta.ChannelSpec carries the collection ID and the opaque
// VchannelInfo) and Deregister when the collection is dropped, and runs a
// Coordinator (Run in a goroutine; several DataCoords elect one). Each
// DataNode runs package nodewatch with its handler. Owner, Channels and
// Remaining read the result; none of them needs the leader.
//
// What it does not guarantee:
//   - A paused process (GC, SIGSTOP, a VM freeze) that outlives its lease
//     may still act on a channel after it moved, until it notices on waking
//     (a session cross-checks a clock that counts through a system suspend,
//     CLOCK_BOOTTIME on Linux, but a process stopped between two reads of
//     it cannot notice anything); only the handler's fencing token
//     (ChannelInfo.AssignRevision) covers that window. Every other case —
//     crash, partition, eviction, a lease that vanished — is covered by the
//     wait above, provided the node's and the coordinator's clocks run at
//     rates within the fence margin of each other.
//   - Channels waiting in channel/remaining/ go to the nodes that are live
//     when the leader next decides: if nodes join one at a time, the first
//     may get them all, and balancing spreads them afterwards.
//   - A changed ChannelSpec (deregistered and registered again while
//     assigned) takes effect at the channel's next placement.
//
// channelmgr must not import a backend, format keys itself (package meta
// does), or write anything without the leader guard while coordinating. It
// does not run channels: that is package nodewatch's job.
package channelmgr
