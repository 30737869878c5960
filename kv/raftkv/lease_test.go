package raftkv

import (
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/chanwatch/chanwatch/kv"
)

// TestLeaseExtendedOnLeaderChange: a new leader gives every lease a full
// TTL from its takeover, then expires it through the log when nobody keeps
// it alive; every replica deletes the keys in the same revision.
func TestLeaseExtendedOnLeaderChange(t *testing.T) {
	clock := clockwork.NewFakeClock()
	c := startCluster(t, 3, WithClock(clock))
	ctx := testContext(t)
	l := leader(t, c)
	const ttl = 5 * time.Second

	id, err := c.Node(follower(c, l)).Grant(ctx, ttl)
	noErr(t, err)
	resp, err := c.Node(l).Txn(ctx, kv.Txn{Then: []kv.Op{
		kv.OpPutLease("lease/a", []byte("1"), id),
		kv.OpPutLease("lease/b", []byte("2"), id),
	}})
	noErr(t, err)
	clock.Advance(3 * time.Second)
	left, err := c.Node(l).TimeToLive(ctx, id)
	noErr(t, err)
	equal(t, left, 2*time.Second, "time to live on the old leader")

	// The leader dies 3s into the lease; the new one restarts the TTL.
	noErr(t, c.Kill(l))
	nl := leader(t, c)
	left, err = c.Node(nl).TimeToLive(ctx, id)
	noErr(t, err)
	equal(t, left, ttl, "a new leader gives every lease a full TTL")

	// Past the old deadline, the lease lives on.
	clock.Advance(3 * time.Second)
	left, err = c.Node(nl).TimeToLive(ctx, id)
	noErr(t, err)
	equal(t, left, 2*time.Second, "the lease counts from the takeover")
	other := c.Node(3 - l - nl) // the node that is neither dead nor leader
	_, _, err = other.Get(ctx, "lease/a")
	noErr(t, err, "the key outlives the old deadline")

	// Past the new deadline, the leader expires it through the log: the
	// follower's own store sees one revision with both deletes.
	w := other.Watch(ctx, "lease/", resp.Revision+1)
	clock.Advance(3 * time.Second)
	events := nextEvents(t, w)
	equal(t, len(events), 2, "both keys go in one revision")
	for _, e := range events {
		equal(t, e.Type, kv.EventDelete)
		equal(t, e.Revision(), resp.Revision+1)
	}
	_, err = other.TimeToLive(ctx, id)
	errIs(t, err, kv.ErrLeaseNotFound)
	_, err = other.KeepAliveOnce(ctx, id)
	errIs(t, err, kv.ErrLeaseNotFound)
	waitConverged(t, c)
	for _, i := range []int{nl, 3 - l - nl} {
		_, ok := c.Node(i).fsm.store.Lease(id)
		check(t, !ok, "node %d still has the lease", i)
	}

	// A kept-alive lease survives any number of TTLs.
	id2, err := other.Grant(ctx, ttl)
	noErr(t, err)
	for range 4 {
		clock.Advance(ttl / 2)
		_, err := other.KeepAliveOnce(ctx, id2)
		noErr(t, err)
	}
	left, err = other.TimeToLive(ctx, id2)
	noErr(t, err)
	equal(t, left, ttl)
}

// TestLeaseMinTTL: Grant raises a short TTL to the minimum.
func TestLeaseMinTTL(t *testing.T) {
	c := startCluster(t, 1, WithMinLeaseTTL(2*time.Second))
	ctx := testContext(t)
	n := c.Node(leader(t, c))
	id, err := n.Grant(ctx, time.Millisecond)
	noErr(t, err)
	ttl, err := n.KeepAliveOnce(ctx, id)
	noErr(t, err)
	equal(t, ttl, 2*time.Second)
	_, err = n.Grant(ctx, 0)
	errIs(t, err, kv.ErrInvalidTTL)
}
