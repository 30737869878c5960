package channelmgr

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/chanwatch/chanwatch/internal/etcdembed"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/etcdkv"
	"github.com/chanwatch/chanwatch/kv/memkv"
	"github.com/chanwatch/chanwatch/meta"
)

// payload is a Vchannel JSON value of about n bytes.
func payload(n int) []byte {
	return []byte(`{"seek":"` + strings.Repeat("p", n) + `"}`)
}

// sizeRun registers count channels with a Vchannel of vchBytes each, runs
// one node and a coordinator whose backend is built on a client made with
// clientOpts and etcdkv options kvOpts, and waits until every channel is
// Watched. It returns the coordinator's txn counts by result.
func sizeRun(t *testing.T, count, vchBytes int, clientOpts []etcdembed.ClientOption, kvOpts ...etcdkv.Option) map[string]float64 {
	srv := etcdembed.NewForTest(t)
	root := "channelmgr-size"
	b := etcdBackend(t, srv, root)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ttl := 2 * srv.MinLeaseTTL()
	n, _ := runNode(t, srv, root, ttl)
	for _, ch := range names("big", count) {
		if err := Register(ctx, b, meta.ChannelSpec{Name: ch, CollectionID: 1, Vchannel: payload(vchBytes)}); err != nil {
			t.Fatal(err)
		}
	}
	cli, err := srv.Client(clientOpts...)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	cb, err := etcdkv.New(cli, root, append([]etcdkv.Option{etcdkv.WithMaxTxnOps(srv.MaxTxnOps())}, kvOpts...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	reg := prometheus.NewRegistry()
	c, err := New(cb, WithID("c"), WithSessionTTL(ttl), WithNodeTTL(ttl), WithCheckInterval(100*time.Millisecond),
		WithRegisterer(reg), WithLogger(zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- c.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	h := &harness{t: t, ctx: ctx}
	h.eventuallyFor(2*time.Minute, fmt.Sprintf("%d channels of %d KiB watched", count, vchBytes>>10), func() bool {
		infos, err := Channels(ctx, b, n.ID())
		if err != nil || len(infos) != count {
			return false
		}
		for _, i := range infos {
			if i.State != meta.Watched || len(i.Vchannel) != len(payload(vchBytes)) {
				return false
			}
		}
		return true
	})
	txns := map[string]float64{}
	for _, r := range []string{"ok", "conflict", "too_large", "error"} {
		txns[r] = testutil.ToFloat64(c.m.txns.WithLabelValues(r))
	}
	t.Logf("%d × %d KiB watched in %v; txns %v", count, vchBytes>>10, time.Since(start).Round(time.Millisecond), txns)
	return txns
}

// TestLargeSpecsOnEtcd is issue 12's failing input: 40 channels with a 64
// KiB Vchannel each (2.6 MiB in all) on an etcd client with default
// settings. The coordinator packs by bytes, so no txn is refused.
func TestLargeSpecsOnEtcd(t *testing.T) {
	txns := sizeRun(t, 40, 64<<10, nil)
	if txns["too_large"] != 0 || txns["error"] != 0 {
		t.Fatalf("txns %v: want none refused or failed", txns)
	}
	if txns["ok"] < 2 {
		t.Fatalf("txns %v: 2.6 MiB of placements cannot fit in one txn", txns)
	}
}

// TestLargeSpecsSmallClientUntold: the client refuses to send more than 512
// KiB but the backend was not told (it assumes clientv3's 2 MiB and packs
// up to etcd's 1.5 MiB). The refusal maps to kv.ErrTxnTooLarge and the
// coordinator splits instead of resending the same txn.
func TestLargeSpecsSmallClientUntold(t *testing.T) {
	small := []etcdembed.ClientOption{func(c *clientv3.Config) { c.MaxCallSendMsgSize = 512 << 10 }}
	txns := sizeRun(t, 40, 64<<10, small)
	if txns["too_large"] == 0 {
		t.Fatalf("txns %v: the first batch (about 1.5 MiB) must have been refused by the 512 KiB client", txns)
	}
	if txns["error"] != 0 {
		t.Fatalf("txns %v: a refusal for size must not be taken for an unknown outcome", txns)
	}
}

// TestLargeSpecsSmallClientTold: the same client, with the backend told its
// limit: nothing is refused.
func TestLargeSpecsSmallClientTold(t *testing.T) {
	small := []etcdembed.ClientOption{func(c *clientv3.Config) { c.MaxCallSendMsgSize = 512 << 10 }}
	txns := sizeRun(t, 40, 100<<10, small, etcdkv.WithMaxCallSendMsgSize(512<<10))
	if txns["too_large"] != 0 || txns["error"] != 0 {
		t.Fatalf("txns %v: want none refused or failed", txns)
	}
}

// TestRegisterTooLarge: a spec whose assignment cannot fit in one txn is
// refused at Register with ErrValueTooLarge and nothing is written; one
// that fits just under the limit is accepted.
func TestRegisterTooLarge(t *testing.T) {
	ctx := context.Background()
	b := memkv.New()
	defer b.Close()
	rev0 := mustRev(t, b)
	err := Register(ctx, b, meta.ChannelSpec{Name: "huge", Vchannel: payload(3 << 20)})
	if !errors.Is(err, ErrValueTooLarge) {
		t.Fatalf("3 MiB spec: got %v, want ErrValueTooLarge", err)
	}
	if got := mustRev(t, b); got != rev0 {
		t.Fatalf("refused Register wrote: revision %d -> %d", rev0, got)
	}
	// The largest Vchannel that fits: AssignmentBytes grows byte for byte.
	spec := meta.ChannelSpec{Name: "edge", Vchannel: payload(0)}
	n, err := AssignmentBytes(spec)
	if err != nil {
		t.Fatal(err)
	}
	spec.Vchannel = payload(b.MaxTxnBytes() - n)
	if err := Register(ctx, b, spec); err != nil {
		t.Fatalf("a spec whose assignment is exactly MaxTxnBytes: %v", err)
	}
	spec.Name, spec.Vchannel = "edge2", payload(b.MaxTxnBytes()-n+1)
	if err := Register(ctx, b, spec); !errors.Is(err, ErrValueTooLarge) {
		t.Fatalf("one byte more: got %v, want ErrValueTooLarge", err)
	}
}

func mustRev(t *testing.T, b kv.KV) int64 {
	t.Helper()
	_, rev, err := b.List(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

// TestOversizeUnitHeld: a spec written around Register, whose registry key
// fits the backend but whose assignment does not, is never sent: the
// coordinator holds it, logs it once per channel revision (not once per
// pass), reports it in channels_too_large, and places every other channel.
func TestOversizeUnitHeld(t *testing.T) {
	const limit = 64 << 10
	h := newHarness(t, memkv.WithMaxTxnBytes(limit))
	ok := names("ok", 5)
	h.register(1, ok...)
	// The registry put alone is just under the limit; the placement (a
	// ChannelInfo with the same payload, plus compares) is over it.
	spec := meta.ChannelSpec{Name: "fat", CollectionID: 1, Vchannel: payload(0)}
	val, err := meta.EncodeChannelSpec(spec)
	if err != nil {
		t.Fatal(err)
	}
	put := kv.Txn{Then: []kv.Op{kv.OpPut(meta.RegistryKey("fat"), val)}}
	spec.Vchannel = payload(limit - kv.TxnBytes(put) - 16)
	if val, err = meta.EncodeChannelSpec(spec); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(h.ctx, h.kv, meta.RegistryKey("fat"), val); err != nil {
		t.Fatalf("raw registry put of %d bytes: %v", len(val), err)
	}
	core, logs := observer.New(zap.WarnLevel)
	c := h.lead(WithLogger(zap.New(core)))
	h.addNode()
	for i := 0; i < 10; i++ {
		h.advance(step, c)
	}
	h.eventually("the other channels watched", func() bool { return h.allWatched(ok) })
	h.advance(5*step, c)
	if a, found := h.assignments()["fat"]; found {
		t.Fatalf("oversize channel was assigned: %+v", a)
	}
	held := logs.FilterMessageSnippet("channel held").Len()
	if held != 1 {
		t.Fatalf("held channel logged %d times over 15 passes, want once", held)
	}
	if got := testutil.ToFloat64(c.m.tooLarge); got != 1 {
		t.Fatalf("channels_too_large = %v, want 1", got)
	}
	if got := testutil.ToFloat64(c.m.txns.WithLabelValues("too_large")); got != 0 {
		t.Fatalf("%v txns refused for size: the oversize unit must not be sent", got)
	}
	// Deregistering it clears the gauge.
	if err := Deregister(h.ctx, h.kv, "fat"); err != nil {
		t.Fatal(err)
	}
	h.advance(2*step, c)
	h.eventually("channels_too_large back to 0", func() bool { return testutil.ToFloat64(c.m.tooLarge) == 0 })
}
