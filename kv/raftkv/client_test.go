package raftkv

import (
	"context"
	"slices"
	"testing"

	"github.com/chanwatch/chanwatch/kv"
)

// TestClientRoots: Clients on roots that are string prefixes of each other
// never see each other's keys, in reads, txns and watches; closing one
// ends its watches with ErrClosed and leaves the node serving.
func TestClientRoots(t *testing.T) {
	c := startCluster(t, 3)
	ctx := testContext(t)
	l := leader(t, c)
	a, err := c.Node(l).ClientAt("app")
	noErr(t, err)
	b, err := c.Node(follower(c, l)).ClientAt("app2")
	noErr(t, err)
	whole := c.Node(l).Client()
	_, err = c.Node(l).ClientAt("bad/")
	errIs(t, err, kv.ErrInvalidKey)

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wa := a.Watch(wctx, "", 0)
	wb := b.Watch(wctx, "", 0)

	_, err = kv.Put(ctx, a, "k", []byte("a"))
	noErr(t, err)
	rev, err := kv.Put(ctx, b, "k", []byte("b"))
	noErr(t, err)
	r, err := b.Txn(ctx, kv.Txn{
		If:   []kv.Cmp{kv.CmpModRevision("k", kv.Equal, rev)},
		Then: []kv.Op{kv.OpPut("k2", nil), kv.OpGet("k")},
	})
	noErr(t, err)
	check(t, r.Succeeded, "the compare sees the root's own key")
	equal(t, r.Responses[1].KV.Key, "k")

	items, _, err := a.List(ctx, "")
	noErr(t, err)
	equal(t, len(items), 1)
	equal(t, items[0].Key, "k")
	equal(t, string(items[0].Value), "a")
	items, _, err = whole.List(ctx, "")
	noErr(t, err)
	var keys []string
	for _, it := range items {
		keys = append(keys, it.Key)
	}
	check(t, slices.Equal(keys, []string{"app/k", "app2/k", "app2/k2"}), "whole keyspace: %v", keys)

	ea := nextEvents(t, wa)
	equal(t, len(ea), 1)
	equal(t, ea[0].KV.Key, "k")
	eb := nextEvents(t, wb)
	equal(t, eb[0].KV.Key, "k")
	equal(t, string(eb[0].KV.Value), "b")

	noErr(t, b.Close())
	var last error
	for resp := range wb {
		last = resp.Err
	}
	errIs(t, last, kv.ErrClosed, "a closed Client's watch ends with ErrClosed")
	_, _, err = b.Get(ctx, "k")
	errIs(t, err, kv.ErrClosed)
	got, _, err := a.Get(ctx, "k")
	noErr(t, err)
	equal(t, string(got.Value), "a")
	noErr(t, a.Close())
}
