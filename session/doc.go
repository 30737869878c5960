// Package session gives chanwatch processes liveness and identity on a
// kv.Backend: a Session keeps one lease alive and fences itself when it can
// no longer prove the lease is alive; RegisterNode and AllocateNodeID give a
// node a never-reused ID and a session key on that lease; Campaign elects the
// coordinator and hands it a fencing token (the create revision of the
// leader key) as a kv.Cmp to append to every write.
//
// The self-fence rule is the safety core: a Session records the send time of
// every keep-alive, and if none has been acknowledged by
//
//	FenceDeadline = send time of the last acked keep-alive + TTL − margin
//
// its Done channel closes with ErrFenced at that instant on its clock, even
// while a keep-alive call hangs. The server expires the lease no earlier than
// receive time + TTL >= send time + TTL > FenceDeadline, so a process that
// waits for the lease to expire (or revokes it and waits one TTL) knows the
// holder has already stopped, provided the two clocks' rates agree within the
// margin.
//
// Two more things end a node's session at once, because either means the
// coordinator may soon move the node's channels: its session key deleted,
// replaced or marked evicted (RegisterNode watches it; ErrEvicted), and a
// suspend of the process or system past the fence deadline, which Go's
// monotonic timers do not see on Linux (the deadline is cross-checked on
// CLOCK_BOOTTIME; see WithSuspendClock). A process stopped outright
// (SIGSTOP) notices nothing until it runs again: only the fencing token
// covers what it had in flight.
//
// Node IDs are never reused, whatever happens to the counter: a counter that
// is missing or corrupt is repaired from the highest ID in the root, and an
// ID whose session key exists or whose channel prefix is not empty is
// skipped. A corrupt leader key (a value that does not decode, or no lease)
// is rewritten by its holder and, if nobody does, deleted by a candidate
// after one session TTL, so it never wedges the election.
//
// session does no channel work and never formats keys itself (package meta
// does). It must not import a backend; it speaks only the kv contract, and
// every timer runs on an injectable clockwork.Clock.
package session
