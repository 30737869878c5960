package raftkv

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
)

// TestBasic: put, get, txn and watch through the leader and through a
// follower (forwarded), and a watch on a follower sees what one on the
// leader sees.
func TestBasic(t *testing.T) {
	c := startCluster(t, 3)
	ctx := testContext(t)
	l := leader(t, c)
	f := follower(c, l)
	ln, fn := c.Node(l), c.Node(f)

	// The watches outlive ctx, so that a stalled one fails with "no watch
	// response" rather than ending with ctx.
	wctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wl := ln.Watch(wctx, "k/", 0)
	wf := fn.Watch(wctx, "k/", 0)

	rev1, err := kv.Put(ctx, ln, "k/a", []byte("1"))
	noErr(t, err)
	rev2, err := kv.Put(ctx, fn, "k/b", []byte("2"))
	noErr(t, err)
	equal(t, rev2, rev1+1, "one revision per write txn")

	for _, n := range []*Node{ln, fn} {
		got, rev, err := n.Get(ctx, "k/b")
		noErr(t, err)
		equal(t, string(got.Value), "2")
		equal(t, got.ModRevision, rev2)
		check(t, rev >= rev2, "read revision %d < %d", rev, rev2)
		_, _, err = n.Get(ctx, "k/none")
		errIs(t, err, kv.ErrKeyNotFound)
		kvs, _, err := n.List(ctx, "k/")
		noErr(t, err)
		equal(t, len(kvs), 2)
	}

	// A compare-and-swap through the follower: the first wins, the
	// second sees the new mod revision and runs Else.
	cas := kv.Txn{
		If:   []kv.Cmp{kv.CmpModRevision("k/a", kv.Equal, rev1)},
		Then: []kv.Op{kv.OpPut("k/a", []byte("3")), kv.OpDelete("k/b")},
		Else: []kv.Op{kv.OpGet("k/a")},
	}
	r, err := fn.Txn(ctx, cas)
	noErr(t, err)
	check(t, r.Succeeded)
	equal(t, r.Revision, rev2+1)
	r, err = fn.Txn(ctx, cas)
	noErr(t, err)
	check(t, !r.Succeeded)
	equal(t, string(r.Responses[0].KV.Value), "3")
	equal(t, r.Revision, rev2+1, "a txn that writes nothing does not advance the revision")

	// Errors keep their identity across forwarding.
	_, err = fn.Txn(ctx, kv.Txn{Then: []kv.Op{kv.OpPutLease("k/c", nil, 12345)}})
	errIs(t, err, kv.ErrLeaseNotFound)
	_, err = fn.Txn(ctx, kv.Txn{Then: slices.Repeat([]kv.Op{kv.OpGet("k/a")}, DefaultMaxTxnOps+1)})
	errIs(t, err, kv.ErrTxnTooLarge)

	// Both watches see the same three revisions, txn events together.
	for _, w := range []kv.WatchChan{wl, wf} {
		var got []kv.Event
		for len(got) < 4 {
			got = append(got, nextEvents(t, w)...)
		}
		equal(t, len(got), 4)
		var revs []int64
		for _, e := range got {
			revs = append(revs, e.Revision())
		}
		check(t, slices.Equal(revs, []int64{rev1, rev2, rev2 + 1, rev2 + 1}), "revisions %v", revs)
		equal(t, got[3].Type, kv.EventDelete)
	}

	// Compaction goes through the log; its errors too.
	errIs(t, fn.Compact(ctx, 1000), kv.ErrFutureRev)
	noErr(t, fn.Compact(ctx, rev1))
	err = fn.Compact(ctx, rev1)
	errIs(t, err, kv.ErrCompacted)
	equal(t, kv.CompactRevision(err), rev1)
	errIs(t, (<-fn.Watch(ctx, "k/", rev1)).Err, kv.ErrCompacted)

	// Leases through a follower.
	id, err := fn.Grant(ctx, 5*time.Second)
	noErr(t, err)
	ttl, err := fn.KeepAliveOnce(ctx, id)
	noErr(t, err)
	equal(t, ttl, 5*time.Second)
	left, err := fn.TimeToLive(ctx, id)
	noErr(t, err)
	check(t, left > 4*time.Second && left <= 5*time.Second, "time to live %v", left)
	_, err = fn.Txn(ctx, kv.Txn{Then: []kv.Op{kv.OpPutLease("k/leased", nil, id)}})
	noErr(t, err)
	noErr(t, fn.Revoke(ctx, id))
	errIs(t, fn.Revoke(ctx, id), kv.ErrLeaseNotFound)
	_, err = fn.KeepAliveOnce(ctx, id)
	errIs(t, err, kv.ErrLeaseNotFound)
	_, _, err = fn.Get(ctx, "k/leased")
	errIs(t, err, kv.ErrKeyNotFound)

	// Close ends open watches with ErrClosed and fails later calls.
	noErr(t, c.Kill(f))
	for {
		resp, ok := <-wf
		check(t, ok, "closed without ErrClosed")
		if resp.Err != nil {
			errIs(t, resp.Err, kv.ErrClosed)
			break
		}
	}
	_, _, err = fn.Get(ctx, "k/a")
	errIs(t, err, kv.ErrClosed)
	_, err = kv.Put(ctx, fn, "k/a", nil)
	errIs(t, err, kv.ErrClosed)
	// The two left still serve.
	_, err = kv.Put(ctx, ln, "k/a", []byte("4"))
	noErr(t, err)
}
