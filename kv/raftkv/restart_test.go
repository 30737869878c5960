package raftkv

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/chanwatch/chanwatch/kv"
)

// TestRestartAllFromDisk: all three nodes stop and start again from their
// directories with the same data and revision; leases come back with a
// full TTL from the new leader's takeover, and expire after it.
func TestRestartAllFromDisk(t *testing.T) {
	clock := clockwork.NewFakeClock()
	c := startCluster(t, 3, WithClock(clock))
	ctx := testContext(t)
	l := leader(t, c)
	n := c.Node(follower(c, l))

	const ttl = 10 * time.Second
	id, err := n.Grant(ctx, ttl)
	noErr(t, err)
	for i := range 20 {
		_, err := kv.Put(ctx, n, fmt.Sprintf("r/%02d", i), []byte(fmt.Sprint(i)))
		noErr(t, err)
	}
	_, err = n.Txn(ctx, kv.Txn{Then: []kv.Op{kv.OpPutLease("r/leased", []byte("x"), id), kv.OpDelete("r/00")}})
	noErr(t, err)
	before, rev, err := n.List(ctx, "")
	noErr(t, err)
	clock.Advance(ttl - time.Second) // one second left on the old leader's clock
	waitConverged(t, c)
	hash := n.fsm.store.Hash()

	for i := range c.Len() {
		noErr(t, c.Kill(i))
	}
	for i := range c.Len() {
		noErr(t, c.Restart(i))
	}
	nl := leader(t, c)
	for i := range c.Len() {
		after, rev2, err := c.Node(i).List(ctx, "")
		noErr(t, err)
		equal(t, rev2, rev, "node %d: same revision after restart", i)
		check(t, slices.EqualFunc(before, after, sameKV), "node %d: same data after restart", i)
	}
	waitConverged(t, c)
	equal(t, c.Node(0).fsm.store.Hash(), hash, "same state hash after restart")

	// The lease is back with a full TTL from the takeover, not 1s.
	left, err := c.Node(nl).TimeToLive(ctx, id)
	noErr(t, err)
	equal(t, left, ttl)
	clock.Advance(ttl - time.Second)
	_, _, err = c.Node(nl).Get(ctx, "r/leased")
	noErr(t, err, "the lease does not expire before its extended deadline")
	clock.Advance(time.Second)
	eventually(t, func() bool {
		_, _, err := c.Node(nl).Get(ctx, "r/leased")
		return err != nil
	}, "the lease expires a full TTL after the takeover")
	_, _, err = c.Node(nl).Get(ctx, "r/leased")
	errIs(t, err, kv.ErrKeyNotFound)
	_, rev3, err := c.Node(nl).List(ctx, "")
	noErr(t, err)
	equal(t, rev3, rev+1, "the expiry is one revision")
}

func sameKV(a, b kv.KeyValue) bool {
	return a.Key == b.Key && string(a.Value) == string(b.Value) && a.CreateRevision == b.CreateRevision &&
		a.ModRevision == b.ModRevision && a.Version == b.Version && a.Lease == b.Lease
}
