package raftkv

import (
	"fmt"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
)

// TestInstallSnapshot: a follower stopped while the leader writes and
// compacts its log past the follower's last entry is sent a snapshot when
// it comes back (InstallSnapshot), and ends with the leader's state.
func TestInstallSnapshot(t *testing.T) {
	c := startCluster(t, 3, WithSnapshotThreshold(16), WithTrailingLogs(8), WithSnapshotInterval(100*time.Millisecond))
	ctx := testContext(t)
	l := leader(t, c)
	f := follower(c, l)
	ln := c.Node(l)
	for i := range 10 {
		_, err := kv.Put(ctx, ln, fmt.Sprintf("s/%d", i), []byte("before"))
		noErr(t, err)
	}
	waitConverged(t, c)
	stoppedAt, err := c.Node(f).logs.LastIndex()
	noErr(t, err)
	noErr(t, c.Kill(f))

	// Writes while it is down, with deletes and a compaction, so that the
	// snapshot carries every kind of state.
	var last int64
	for i := range 100 {
		rev, err := kv.Put(ctx, ln, fmt.Sprintf("s/%d", i%30), []byte(fmt.Sprintf("during-%d", i)))
		noErr(t, err)
		last = rev
	}
	_, _, err = kv.Delete(ctx, ln, "s/3")
	noErr(t, err)
	noErr(t, ln.Compact(ctx, last-10))
	noErr(t, ln.raft.Snapshot().Error())
	first, err := ln.logs.FirstIndex()
	noErr(t, err)
	check(t, first > stoppedAt+1, "the leader's log starts at %d, after the follower's last entry %d", first, stoppedAt)

	noErr(t, c.Restart(f))
	fn := c.Node(f)
	restores := fn.fsm.restores.Load() // its own snapshot, if it had one
	eventually(t, func() bool { return fn.fsm.store.Hash() == ln.fsm.store.Hash() }, "the follower reaches the leader's state")
	check(t, fn.fsm.restores.Load() > restores, "the follower caught up by installing a snapshot")
	equal(t, fn.fsm.store.Rev(), ln.fsm.store.Rev())
	equal(t, fn.fsm.store.CompactRev(), last-10)

	// It serves linearizable reads and follows new writes.
	rev, err := kv.Put(ctx, fn, "s/after", []byte("x"))
	noErr(t, err)
	item, _, err := fn.Get(ctx, "s/after")
	noErr(t, err)
	equal(t, item.ModRevision, rev)
	waitConverged(t, c)
}
