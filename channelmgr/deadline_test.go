package channelmgr

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/memkv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Issue 12 (liveness), kind A: a deadline belongs to a (key, mod revision)
// and survives watch resumes and re-lists; it only waits while the view is
// stale, and an outage is credited back at most once per timeout.

// flakyWatch is a coordinator handle whose watches fail at once while down.
type flakyWatch struct {
	*memkv.KV
	down atomic.Bool
}

func (f *flakyWatch) Watch(ctx context.Context, prefix string, rev int64) kv.WatchChan {
	if f.down.Load() {
		ch := make(chan kv.WatchResponse, 1)
		ch <- kv.WatchResponse{Err: fmt.Errorf("%w: test: watch down", kv.ErrUnavailable)}
		close(ch)
		return ch
	}
	return f.KV.Watch(ctx, prefix, rev)
}

// setDown breaks the coordinator's watch and keeps it from resuming (down)
// or lets it resume on its next retry (up).
func (f *flakyWatch) setDown(down bool) {
	f.down.Store(down)
	if down {
		f.KV.DropWatches()
	}
}

func (h *harness) evicted(n *fakeNode) bool {
	h.t.Helper()
	_, err := h.kv.TimeToLive(h.ctx, n.lease)
	if err != nil && !errors.Is(err, kv.ErrLeaseNotFound) {
		h.t.Fatal(err)
	}
	return err != nil
}

// stuckRelease leads on handle with two nodes, x Watched on a, and a
// drained without ever answering: x stays ToRelease on a. It returns a and
// the coordinator; the release timeout is armed at the returned time.
func stuckRelease(t *testing.T, h *harness, handle kv.Backend) (*fakeNode, *coord, time.Time) {
	t.Helper()
	a := h.addNode()
	c := h.startCoord(handle)
	h.eventually("leads", func() bool { return c.IsLeader() && c.lastPass.Load() != 0 })
	h.register(1, "x")
	h.eventually("x watched on a", func() bool { return h.allWatched([]string{"x"}, a.id) })
	h.addNode()
	a.set(func(n *fakeNode) { n.ignoreRel = true })
	a.setStopping()
	h.eventually("x ToRelease on a", func() bool { return h.assignment("x").info.State == meta.ToRelease })
	armed := h.clk.Now()
	h.eventually("coordinator saw the ToRelease", func() bool { return c.lastPass.Load() >= armed.UnixNano() })
	return a, c, armed
}

// stepUntil advances the clock a step at a time, breaking the coordinator's
// watch every breakEvery, until done holds; it fails if that takes longer
// than within, and returns how long it took.
func stepUntil(h *harness, c *coord, handle *memkv.KV, breakEvery, within time.Duration, what string, done func() bool) time.Duration {
	h.t.Helper()
	start := h.clk.Now()
	for !done() {
		el := h.clk.Since(start)
		if el > within {
			h.t.Fatalf("%s: not within %v of fake time\n%s", what, within, h.dump())
		}
		if el > 0 && el%breakEvery == 0 {
			handle.DropWatches() // resumes at once from its last revision + 1
		}
		h.advance(step, c)
	}
	return h.clk.Since(start)
}

// A node that never answers a ToRelease is evicted after the release
// timeout even though the coordinator's watch breaks every 20 s.
func TestReleaseDeadlineSurvivesWatchBreaks(t *testing.T) {
	h := newHarness(t)
	handle := h.kv.NewClient()
	a, c, _ := stuckRelease(t, h, handle)
	took := stepUntil(h, c, handle, 20*time.Second, 33*time.Second, "a evicted", func() bool { return h.evicted(a) })
	if took < 30*time.Second-step {
		t.Fatalf("a evicted %v after the ToRelease, before the release timeout", took)
	}
	if got := testutil.ToFloat64(c.m.evictions); got != 1 {
		t.Fatalf("evictions metric = %v", got)
	}
}

// A node that never answers a ToWatch loses it after the watch timeout
// even though the coordinator's watch breaks every 10 s.
func TestWatchDeadlineSurvivesWatchBreaks(t *testing.T) {
	h := newHarness(t)
	n := h.addNode()
	n.set(func(n *fakeNode) { n.ignoreWat = true })
	handle := h.kv.NewClient()
	c := h.startCoord(handle)
	h.eventually("leads", func() bool { return c.IsLeader() && c.lastPass.Load() != 0 })
	h.register(1, "x")
	h.eventually("x ToWatch", func() bool { return h.assignment("x").info.State == meta.ToWatch })
	now := h.clk.Now()
	h.eventually("coordinator saw the ToWatch", func() bool { return c.lastPass.Load() >= now.UnixNano() })
	took := stepUntil(h, c, handle, 10*time.Second, 33*time.Second, "x released after the watch timeout", func() bool {
		a := h.assignment("x")
		return a.info.Attempts == 1 && strings.Contains(a.info.LastError, "watch timeout")
	})
	if took < 30*time.Second-step {
		t.Fatalf("watch timeout after %v, before the 30s timeout", took)
	}
}

// While the watch is down no deadline fires, even one that passed; when it
// runs again the outage is credited back, but at most one timeout: the
// node is evicted 2 timeouts after the ToRelease, not 30 s after the
// watch came back (the outage credited in full) nor at once (no credit).
func TestDeadlineWaitsForFreshViewOutageCreditedOnce(t *testing.T) {
	h := newHarness(t)
	handle := &flakyWatch{KV: h.kv.NewClient()}
	a, c, armed := stuckRelease(t, h, handle)
	h.advance(5*time.Second, c)
	handle.setDown(true)
	h.advance(45*time.Second, c) // the deadline (30 s) passes while the watch is down
	if h.evicted(a) {
		t.Fatalf("a evicted while the coordinator's watch was down, %v after the ToRelease", h.clk.Since(armed))
	}
	handle.setDown(false) // resumes on its next retry, within a check interval
	h.advance(59*time.Second-h.clk.Since(armed), c)
	if h.evicted(a) {
		t.Fatalf("a evicted %v after the ToRelease: the outage was not credited back", h.clk.Since(armed))
	}
	h.advance(3*time.Second, c)
	h.eventually("a evicted 2 release timeouts after the ToRelease", func() bool { return h.evicted(a) })
}
