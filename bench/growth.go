package bench

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"strings"
	"time"

	"github.com/chanwatch/chanwatch/channelmgr"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/memkv"
	"github.com/chanwatch/chanwatch/meta"
)

// decision is one balance decision's cost at one size.
type decision struct {
	n       int
	coord   time.Duration // node join event -> the ToRelease txn in the store
	policy  time.Duration // LeastLoaded().Balance alone on the same loads
	moved   int
	writes  int64
	elapsed time.Duration // the whole measurement, setup included
}

// Growth is B6: the cost of one balance decision on memkv with nodes nodes
// at each of sizes channels (ascending; the first is the baseline). Each
// size loads a fresh memkv with the channels Watched and evenly spread over
// nodes-1 nodes, lets a coordinator reconcile it, then adds one empty node
// and times from the session key's write until the coordinator's first
// ToRelease txn is in the store: one full reconcile pass ending in a
// balance step. Ratio is the growth from the smallest to the largest size
// divided by n log n's, so <= 1 means no faster than n log n.
func Growth(ctx context.Context, e *Env, sizes []int, nodes int) (Result, error) {
	r := Result{Name: "B6 growth"}
	if len(sizes) < 2 || nodes < 2 {
		return r, fmt.Errorf("bench: B6 needs >= 2 sizes and >= 2 nodes")
	}
	var ds []decision
	for _, n := range sizes {
		e.logf("B6: one balance decision at %d channels on %d nodes (memkv)", n, nodes)
		d, err := balanceDecision(ctx, e, n, nodes)
		if err != nil {
			return r, err
		}
		e.logf("B6: %d channels: decision %v (policy alone %v), %d moves; measurement took %v", n, d.coord, d.policy, d.moved, d.elapsed)
		ds = append(ds, d)
	}
	lo, hi := ds[0], ds[len(ds)-1]
	r.N = hi.n
	r.ChanwatchS, r.BaselineS = hi.coord.Seconds(), lo.coord.Seconds()
	nlogn := func(n int) float64 { return float64(n) * math.Log(float64(n)) }
	predicted := nlogn(hi.n) / nlogn(lo.n)
	r.Ratio = (hi.coord.Seconds() / lo.coord.Seconds()) / predicted
	r.EtcdWrites = hi.writes
	var per []string
	for _, d := range ds {
		per = append(per, fmt.Sprintf("%s: %.4fs (policy %.4fs, %d moves)", size(d.n), d.coord.Seconds(), d.policy.Seconds(), d.moved))
	}
	r.finish("<= 1.0 (growth / n log n growth)", 1.0,
		fmt.Sprintf("decision time grew %.1fx from %s to %s, n log n predicts %.1fx", hi.coord.Seconds()/lo.coord.Seconds(), size(lo.n), size(hi.n), predicted),
		strings.Join(per, ", "),
		fmt.Sprintf("%d nodes; n = channels at the largest size; writes = the decision's txns there", nodes))
	if hi.moved > 0 {
		r.EtcdWritesPerChannel = float64(hi.writes) / float64(hi.moved)
		r.Notes += "; writes/ch is per channel moved"
	}
	return r, nil
}

func size(n int) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return fmt.Sprintf("%dM", n/1_000_000)
	case n >= 1000 && n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}

func balanceDecision(ctx context.Context, e *Env, n, nodes int) (decision, error) {
	began := time.Now()
	d := decision{n: n}
	m := memkv.New()
	defer func() {
		m.Close()
		runtime.GC() // the next size starts without this one's garbage
	}()
	admin := m.NewClient()
	if _, err := load(ctx, admin, n, nodes-1, 0, e.nodeTTL); err != nil {
		return d, err
	}
	if err := m.Store().Compact(m.Store().Rev()); err != nil {
		return d, err
	}
	// No timer may fire a pass of its own during the measurement: only the
	// join event decides.
	coStart := time.Now()
	co, err := startCoordinator(m.NewClient(), e, channelmgr.WithCheckInterval(time.Hour),
		channelmgr.WithWatchTimeout(time.Hour), channelmgr.WithReleaseTimeout(time.Hour))
	if err != nil {
		return d, err
	}
	defer co.stop()
	if err := co.waitWatched(ctx, n); err != nil {
		return d, fmt.Errorf("bench: B6: coordinator never reconciled %d channels: %w", n, err)
	}
	// The gauge is published mid-pass; let the pass finish (it writes
	// nothing: the load is even) before the join.
	if err := settle(ctx, time.Since(coStart)); err != nil {
		return d, err
	}
	joiner := int64(nodes)
	val, err := meta.EncodeNodeSession(meta.NodeSession{ID: joiner, StartTime: time.Now(), State: meta.NodeServing, TTL: e.nodeTTL})
	if err != nil {
		return d, err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rev0 := m.Store().Rev()
	wch := admin.Watch(wctx, meta.ChannelPrefix, rev0+1)
	start := time.Now()
	if _, err := kv.Put(ctx, admin, meta.NodeSessionKey(joiner), val); err != nil {
		return d, err
	}
	select {
	case resp, ok := <-wch:
		if !ok || resp.Err != nil {
			return d, fmt.Errorf("bench: B6: watch ended: %v", resp.Err)
		}
		d.coord = time.Since(start)
		d.moved = len(resp.Events)
	case <-ctx.Done():
		return d, ctx.Err()
	}
	d.writes = m.Store().Rev() - rev0 - 1 // the join is ours

	// The policy alone on the same shape: nodes-1 even nodes and one empty.
	loads := make([]channelmgr.NodeLoad, nodes)
	for i := range loads {
		loads[i].ID = int64(i + 1)
	}
	for i := range n {
		l := &loads[i%(nodes-1)]
		l.Channels = append(l.Channels, channelmgr.Channel{Name: fmt.Sprintf("ch-%07d", i), CollectionID: int64(i/8 + 1), Movable: true})
	}
	p := channelmgr.LeastLoaded()
	ps := time.Now()
	moves := p.Balance(loads, channelmgr.DefaultMaxMovesInFlight)
	d.policy = time.Since(ps)
	if len(moves) == 0 {
		return d, fmt.Errorf("bench: B6: the policy found nothing to move at %d channels", n)
	}
	d.elapsed = time.Since(began)
	return d, nil
}

// settle waits until the pass that published the gauge has surely ended,
// so that the join starts a fresh pass: that pass's tail (forgetting
// state, which walks every channel) must not count as the decision. There
// is no event for "idle", so it waits as long again as the cold start took
// (list + first pass, more than any pass's tail), at least 100ms.
func settle(ctx context.Context, coldStart time.Duration) error {
	t := time.NewTimer(max(coldStart, 100*time.Millisecond))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
