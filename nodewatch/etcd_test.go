package nodewatch_test

import (
	"context"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/internal/etcdembed"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/etcdkv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/nodewatch"
	"github.com/chanwatch/chanwatch/session"
)

// The whole node cycle on a real etcd server, on the real clock: register,
// watch with heartbeats, release, eviction (lease revoked), re-registration.
func TestOnEtcd(t *testing.T) {
	srv := etcdembed.NewForTest(t)
	cli, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	b, err := etcdkv.New(cli, "nodewatch-test")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := testCtx(t)

	h := newHandler(t)
	slow := make(chan struct{})
	h.watch = func(ctx context.Context, info meta.ChannelInfo) error {
		if info.Name != "slow" {
			return nil
		}
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-slow:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			case <-tick.C:
				nodewatch.ReportProgress(ctx) // a slow Watch says it is not stuck
			}
		}
	}
	ttl := 2 * srv.MinLeaseTTL()
	n, err := nodewatch.New(b, h, nodewatch.WithSessionTTL(ttl), nodewatch.WithProgressInterval(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- n.Run(runCtx) }()
	eventually(t, func() bool { return n.ID() != 0 }, waitFor, "registered")
	id := n.ID()

	// A coordinator's writes, straight to etcd.
	put := func(node int64, info meta.ChannelInfo) int64 {
		val, err := meta.EncodeChannelInfo(info)
		if err != nil {
			t.Fatal(err)
		}
		rev, err := kv.Put(ctx, b, meta.ChannelKey(node, info.Name), val)
		if err != nil {
			t.Fatal(err)
		}
		return rev
	}
	get := func(node int64, ch string) meta.ChannelInfo {
		got, _, err := b.Get(ctx, meta.ChannelKey(node, ch))
		if err != nil {
			return meta.ChannelInfo{}
		}
		info, _ := meta.DecodeChannelInfo(got.Key, got.Value)
		return info
	}
	rev := put(id, meta.ChannelInfo{Name: "slow", State: meta.ToWatch})
	eventually(t, func() bool { return get(id, "slow").Progress >= 2 }, waitFor, "heartbeats on etcd")
	close(slow)
	eventually(t, func() bool { return get(id, "slow").State == meta.Watched }, waitFor, "Watched on etcd")
	if got := get(id, "slow"); got.AssignRevision != rev {
		t.Fatalf("token %d, want %d", got.AssignRevision, rev)
	}
	info := get(id, "slow")
	info.State = meta.ToRelease
	put(id, info)
	eventually(t, func() bool { return get(id, "slow").State == meta.Released }, waitFor, "Released on etcd")

	// Eviction: revoke the node's lease; it releases and comes back under a new ID.
	put(id, meta.ChannelInfo{Name: "a", State: meta.ToWatch})
	eventually(t, func() bool { return get(id, "a").State == meta.Watched }, waitFor, "a Watched")
	members, _, err := session.ListNodes(ctx, b)
	if err != nil || len(members) != 1 {
		t.Fatalf("members %+v, %v", members, err)
	}
	if err := b.Revoke(ctx, members[0].Lease); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool { return h.released("a") == 1 }, waitFor, "a released after eviction")
	eventually(t, func() bool { return n.ID() > id }, waitFor, "re-registered")

	cancel()
	if err := <-runErr; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if members, _, _ := session.ListNodes(ctx, b); len(members) != 0 {
		t.Fatalf("session key left after Run returned: %+v", members)
	}
}
