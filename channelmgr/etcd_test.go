package channelmgr

import (
	"context"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/internal/etcdembed"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/etcdkv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/nodewatch"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

type nopHandler struct{}

func (nopHandler) Watch(context.Context, meta.ChannelInfo) error { return nil }
func (nopHandler) Release(context.Context, string) error         { return nil }

// etcdBackend is a backend on its own client of srv, under root.
func etcdBackend(t *testing.T, srv *etcdembed.Server, root string) kv.Backend {
	t.Helper()
	cli, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	b, err := etcdkv.New(cli, root, etcdkv.WithMaxTxnOps(srv.MaxTxnOps()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		b.Close()
		cli.Close()
	})
	return b
}

// runNode runs a real nodewatch node on its own client; cancel is a crash
// only if the node is abandoned, so kill closes its client instead.
func runNode(t *testing.T, srv *etcdembed.Server, root string, ttl time.Duration) (n *nodewatch.Node, kill func()) {
	t.Helper()
	cli, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	b, err := etcdkv.New(cli, root)
	if err != nil {
		t.Fatal(err)
	}
	n, err = nodewatch.New(b, nopHandler{}, nodewatch.WithSessionTTL(ttl), nodewatch.WithLogger(zap.NewNop()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = n.Run(ctx)
	}()
	var once bool
	kill = func() {
		if once {
			return
		}
		once = true
		cli.Close() // the process is gone: no release, no revoke; the lease expires
		cancel()
		<-done
		b.Close()
	}
	t.Cleanup(kill)
	return n, kill
}

// TestOnEtcd places 500 channels on a real etcd server (max 128 ops per
// txn, so several txns) with real nodewatch nodes, then kills the node that
// runs them: they all move to the other node. (2,000 channels run on memkv
// in TestTwoThousandChannelsMove and on etcd in the conformance suite.)
func TestOnEtcd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an etcd server: not run when testing.Short()")
	}
	srv := etcdembed.NewForTest(t)
	const root = "channelmgr-test"
	b := etcdBackend(t, srv, root)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ttl := 2 * srv.MinLeaseTTL()

	a, killA := runNode(t, srv, root, ttl)
	h := &harness{t: t, ctx: ctx}
	chs := names("ch", 500)
	for i := 0; i < len(chs); i += 100 {
		var txn kv.Txn
		for _, ch := range chs[i : i+100] {
			val, _ := meta.EncodeChannelSpec(meta.ChannelSpec{Name: ch, CollectionID: 1})
			txn.Then = append(txn.Then, kv.OpPut(meta.RegistryKey(ch), val))
		}
		if _, err := b.Txn(ctx, txn); err != nil {
			t.Fatal(err)
		}
	}
	c, err := New(etcdBackend(t, srv, root), WithID("c"), WithSessionTTL(ttl), WithNodeTTL(ttl),
		WithCheckInterval(100*time.Millisecond), WithLogger(zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	on := func(id int64) func() bool {
		return func() bool {
			infos, err := Channels(ctx, b, id)
			if err != nil || len(infos) != len(chs) {
				return false
			}
			for _, i := range infos {
				if i.State != meta.Watched {
					return false
				}
			}
			return true
		}
	}
	h.eventuallyFor(5*time.Second, "a registered", func() bool { return a.ID() != 0 })
	h.eventuallyFor(time.Minute, "500 watched on a", on(a.ID()))
	bn, _ := runNode(t, srv, root, ttl)
	h.eventuallyFor(5*time.Second, "b registered", func() bool { return bn.ID() != 0 })
	if err := PauseBalance(ctx, b); err != nil { // keep them on a until it dies
		t.Fatal(err)
	}
	killA()
	h.eventuallyFor(time.Minute, "500 watched on b", on(bn.ID()))
}
