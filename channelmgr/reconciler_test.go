package channelmgr

import (
	"testing"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
)

// newTestReconciler returns a reconciler that leads on h's store (it owns
// the leader key) without running its loop, so a test can feed its view
// and call decide and execute step by step.
func newTestReconciler(t *testing.T, h *harness, opts ...Option) *reconciler {
	t.Helper()
	rev, err := kv.Put(h.ctx, h.kv, meta.CoordinatorKey, []byte(`{"v":1,"id":"test"}`))
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(h.kv, h.coordOptions(opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	r := newReconciler(c, fakeLeader{token: rev, done: make(chan struct{})})
	if err := r.relist(h.ctx); err != nil {
		t.Fatal(err)
	}
	r.watchOK = true
	return r
}

func inflight(r *reconciler) int {
	n := 0
	for _, rt := range r.chans {
		if rt.target != 0 {
			n++
		}
	}
	return n
}

// A balance move's target must survive passes that run before the watch
// has delivered our own ToRelease (the view still says Watched): losing it
// would undercount moves in flight and start extra ones.
func TestMoveTargetSurvivesStaleView(t *testing.T) {
	h := newHarness(t)
	a := h.addNode()
	chs := names("ch", 6)
	h.register(1, chs...)
	for _, ch := range chs {
		h.putInfo(a.id, meta.ChannelInfo{Name: ch, CollectionID: 1, State: meta.Watched})
	}
	b := h.addNode()
	r := newTestReconciler(t, h, WithMaxMovesInFlight(8))
	now := h.clk.Now()
	p := r.decide(now)
	if len(p.units) != 3 {
		t.Fatalf("balance step: %d units, want 3 moves", len(p.units))
	}
	if err := r.execute(h.ctx, p.units, now); err != nil {
		t.Fatal(err)
	}
	if got := inflight(r); got != 3 {
		t.Fatalf("%d moves in flight after the step, want 3", got)
	}
	// A pass on the stale view (our writes not delivered yet) does
	// nothing new and keeps the targets.
	p = r.decide(now)
	if len(p.units) != 0 {
		t.Fatalf("acted on a channel with a write in flight: %d units", len(p.units))
	}
	if got := inflight(r); got != 3 {
		t.Fatalf("stale pass lost move targets: %d in flight", got)
	}
	// The view catches up; the nodes release; the moves land on b.
	if err := r.relist(h.ctx); err != nil {
		t.Fatal(err)
	}
	h.eventually("released", func() bool {
		n := 0
		for _, as := range h.assignments() {
			if as.info.State == meta.Released {
				n++
			}
		}
		return n == 3
	})
	if err := r.relist(h.ctx); err != nil {
		t.Fatal(err)
	}
	p = r.decide(now)
	if err := r.execute(h.ctx, p.units, now); err != nil {
		t.Fatal(err)
	}
	h.eventually("3 channels moved to b", func() bool { return h.counts()[b.id] == 3 })
}
