package bench

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/nodewatch"
	"github.com/chanwatch/chanwatch/session"
)

// recorder keeps every handler call's own timestamps, per channel, for
// B8-B10: when each node's Watch of a channel began and returned and when
// its Release returned. Overlap and gaps are computed from these, not from
// the store: the handlers are where a channel runs.
type recorder struct {
	mu   sync.Mutex
	runs map[string][]*run // by channel, in the order the Watches began
	// seen is when the bench's own watcher received each Released and
	// ToWatch put of a channel, in order: it splits a gap into the node's
	// ack, the coordinator's reaction and the new node's start.
	seen map[string][]seen
}

type seen struct {
	st meta.State
	at time.Time
}

// observe is the tracker's hook.
func (rc *recorder) observe(ch string, st meta.State, at time.Time) {
	if st != meta.Released && st != meta.ToWatch {
		return
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.seen[ch] = append(rc.seen[ch], seen{st, at})
}

// firstAfter returns the first time ch was seen in st at or after t.
func (rc *recorder) firstAfter(ch string, st meta.State, t time.Time) (time.Time, bool) {
	for _, s := range rc.seen[ch] {
		if s.st == st && !s.at.Before(t) {
			return s.at, true
		}
	}
	return time.Time{}, false
}

// run is one node's hold of a channel: from Watch's call to Release's
// return (stop zero: still running).
type run struct {
	node           int // the fleet's node index (a restarted node is a new index)
	start, watched time.Time
	stop           time.Time
}

func newRecorder() *recorder { return &recorder{runs: map[string][]*run{}, seen: map[string][]seen{}} }

// handler returns the no-op Handler of fleet node idx, recording its calls.
func (rc *recorder) handler(idx int) nodewatch.Handler { return &recHandler{rc: rc, node: idx} }

type recHandler struct {
	rc   *recorder
	node int
}

func (h *recHandler) Watch(_ context.Context, info meta.ChannelInfo) error {
	now := time.Now()
	h.rc.mu.Lock()
	defer h.rc.mu.Unlock()
	h.rc.runs[info.Name] = append(h.rc.runs[info.Name], &run{node: h.node, start: now, watched: now})
	return nil
}

func (h *recHandler) Release(_ context.Context, channel string) error {
	now := time.Now()
	h.rc.mu.Lock()
	defer h.rc.mu.Unlock()
	rs := h.rc.runs[channel]
	for i := len(rs) - 1; i >= 0; i-- {
		if rs[i].node == h.node && rs[i].stop.IsZero() {
			rs[i].stop = now
			break
		}
	}
	return nil
}

// handoffs is what the recorder saw since a moment.
type handoffs struct {
	gaps []time.Duration // per move: old Release returned -> new Watch returned
	// The gap in three parts, per move whose Released and ToWatch puts the
	// bench's watcher saw: Release returned -> Released seen (the node's
	// ack), -> ToWatch seen (the coordinator), -> Watch returned (the new
	// node).
	ack, coord, start []time.Duration
	perChan           map[string]time.Duration
	moves             int
	overlap           int // pairs of runs of one channel that were both running at once (must be 0)
	running           map[string]int
}

// since returns the moves whose new run began at or after t, the overlap
// over every run recorded, and how many runs of each channel are running.
func (rc *recorder) since(t time.Time) handoffs {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	h := handoffs{perChan: map[string]time.Duration{}, running: map[string]int{}}
	for ch, rs := range rc.runs {
		for i, cur := range rs {
			if cur.stop.IsZero() {
				h.running[ch]++
			}
			// Any other run still holding the channel when cur began is an
			// overlap (Watch's call to Release's return, both ends included).
			for _, prev := range rs[:i] {
				if prev.stop.IsZero() || !prev.stop.Before(cur.start) {
					h.overlap++
				}
			}
			if i == 0 || cur.start.Before(t) {
				continue
			}
			prev := rs[i-1]
			if prev.stop.IsZero() {
				continue // counted as overlap above
			}
			g := cur.watched.Sub(prev.stop)
			h.gaps = append(h.gaps, g)
			if rel, ok := rc.firstAfter(ch, meta.Released, prev.stop); ok {
				if tw, ok := rc.firstAfter(ch, meta.ToWatch, rel); ok && !tw.After(cur.watched) {
					h.ack = append(h.ack, rel.Sub(prev.stop))
					h.coord = append(h.coord, tw.Sub(rel))
					h.start = append(h.start, cur.watched.Sub(tw))
				}
			}
			h.perChan[ch] += g
			h.moves++
		}
	}
	for _, ds := range [][]time.Duration{h.gaps, h.ack, h.coord, h.start} {
		slices.Sort(ds)
	}
	return h
}

// parts says what the gaps are made of, as the bench's watcher saw it.
func (h handoffs) parts() string {
	f := func(ds []time.Duration) string {
		return fmt.Sprintf("p50 %.1f / p99 %.1f ms", ms(quantile(ds, 0.5)), ms(quantile(ds, 0.99)))
	}
	return fmt.Sprintf("gap parts over %d moves: node's Released ack %s, coordinator (Released seen -> ToWatch seen) %s, new node's start %s",
		len(h.ack), f(h.ack), f(h.coord), f(h.start))
}

// quantile returns the q-quantile of sorted ds (nearest rank), 0 for none.
func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(ds)))) - 1
	return ds[min(max(i, 0), len(ds)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// check fails when any channel ran on two nodes at once, or when a
// registered channel does not run exactly once.
func (h handoffs) check(names []string) error {
	if h.overlap != 0 {
		return fmt.Errorf("bench: %d overlapping runs: a channel ran on two nodes at once", h.overlap)
	}
	lost := 0
	for _, ch := range names {
		if h.running[ch] != 1 {
			lost++
		}
	}
	if lost != 0 {
		return fmt.Errorf("bench: %d channels lost (not running exactly once at the end)", lost)
	}
	return nil
}

func (h handoffs) summary() string {
	return fmt.Sprintf("gap p50 %.1f ms, p99 %.1f ms, max %.1f ms over %d moves; overlap %d; lost 0",
		ms(quantile(h.gaps, 0.5)), ms(quantile(h.gaps, 0.99)), ms(quantile(h.gaps, 1)), h.moves, h.overlap)
}

// seqPutBaseline times rounds of k sequential single-key puts from one raw
// client and returns the sorted durations of the rounds.
func (e *Env) seqPutBaseline(ctx context.Context, root string, rounds, k int) ([]time.Duration, error) {
	clis, closeAll, err := e.rawClients(1)
	if err != nil {
		return nil, err
	}
	defer closeAll()
	c := clis[0]
	if _, err := c.Get(ctx, root+"/warm"); err != nil {
		return nil, err
	}
	val := string(ackValue(0))
	out := make([]time.Duration, 0, rounds)
	for i := range rounds {
		start := time.Now()
		for j := range k {
			if _, err := c.Put(ctx, fmt.Sprintf("%s/k/%05d/%d", root, i, j), val); err != nil {
				return nil, fmt.Errorf("bench: baseline put: %w", err)
			}
		}
		out = append(out, time.Since(start))
	}
	slices.Sort(out)
	return out, nil
}

// names returns the specs' channel names.
func names(specs []meta.ChannelSpec) []string {
	out := make([]string, len(specs))
	for i, s := range specs {
		out[i] = s.Name
	}
	return out
}

// recordedFleet starts a fleet of nodes whose handlers record into a new
// recorder, registers channels and waits until all are Watched.
func (e *Env) recordedFleet(ctx context.Context, root, prefix string, channels, nodes int) (*fleet, *recorder, []string, error) {
	rc := newRecorder()
	f, err := e.newFleetWith(ctx, root, nodes, rc)
	if err != nil {
		return nil, nil, nil, err
	}
	specs := channelSpecs(prefix, channels, 0)
	if _, err := register(ctx, f.admin, specs); err != nil {
		f.close()
		return nil, nil, nil, err
	}
	if err := f.tr.wait(ctx, func(t *tracker) bool { return t.watched == channels }); err != nil {
		f.close()
		return nil, nil, nil, fmt.Errorf("bench: initial placement: %w", err)
	}
	return f, rc, names(specs), nil
}

// Handoff is B8: the gap of a planned move. channels are placed on nodes
// nodes; then the busiest serving node is drained (session.Drain: live
// moves, each ToRelease, Released, delete + ToWatch, Watched), and the next,
// until at least moves channels have moved. Per move, the gap is the time
// from the old node's Release returning to the new node's Watch returning,
// from the handlers' own clocks; ChanwatchS is its p99. Overlap (two nodes
// running one channel) fails the scenario. Baseline: 4 sequential single-key
// puts from one raw client (the floor of a release-before-move), p99 of 200
// rounds. The goal is a p99 gap of 50 ms, expressed as a ratio against the
// same-run baseline.
func Handoff(ctx context.Context, e *Env, channels, nodes, moves int) (Result, error) {
	r := Result{Name: "B8 handoff"}
	if nodes < 3 {
		return r, fmt.Errorf("bench: B8 needs >= 3 nodes, got %d", nodes)
	}
	root := e.newRoot("b8")
	defer e.cleanup(context.WithoutCancel(ctx), root, root+"-baseline")
	e.logf("B8: placing %d channels on %d nodes", channels, nodes)
	f, rc, chs, err := e.recordedFleet(ctx, root, "b8", channels, nodes)
	if err != nil {
		return r, err
	}
	defer f.close()

	rev0, err := e.revision(ctx)
	if err != nil {
		return r, err
	}
	start := time.Now()
	var drained []int64
	moved := 0
	for moved < moves && len(drained) < nodes-2 {
		i, n := f.busiest(drained...)
		id := f.nodes[i].n.ID()
		e.logf("B8: draining node %d (%d channels)", id, n)
		if err := session.Drain(ctx, f.admin, id); err != nil {
			return r, err
		}
		drained = append(drained, id)
		if err := f.tr.wait(ctx, func(t *tracker) bool { return t.watchedExcept(drained...) == channels }); err != nil {
			return r, fmt.Errorf("bench: B8: drain of node %d: %w", id, err)
		}
		moved += n
	}
	wall := time.Since(start)
	rev1, err := e.revision(ctx)
	if err != nil {
		return r, err
	}
	h := rc.since(start)
	if err := h.check(chs); err != nil {
		return r, err
	}
	r.N = h.moves
	r.EtcdWrites = rev1 - rev0 - int64(len(drained)) // the drain marks are the operator's
	base, err := e.seqPutBaseline(ctx, root+"-baseline", 200, 4)
	if err != nil {
		return r, err
	}
	p99 := quantile(h.gaps, 0.99)
	r.ChanwatchS = p99.Seconds()
	r.BaselineS = quantile(base, 0.99).Seconds()
	goal := 0.050 / r.BaselineS
	r.finish(fmt.Sprintf("<= %.2f (p99 gap <= 50 ms)", goal), goal, h.summary(), h.parts(),
		fmt.Sprintf("%d channels on %d nodes, %d nodes drained one after another in %v", channels, nodes, len(drained), wall.Round(time.Millisecond)),
		fmt.Sprintf("baseline 4 sequential puts: p50 %.1f ms, p99 %.1f ms", ms(quantile(base, 0.5)), ms(quantile(base, 0.99))))
	return r, nil
}

// Drain is B9: a node holding its share of channels (channels / nodes) is
// drained with session.Drain; timed until all of them are Watched
// elsewhere. Baseline: 4 single-key puts per moved channel from nodes-1
// raw clients. Gaps and overlap as in B8.
func Drain(ctx context.Context, e *Env, channels, nodes int) (Result, error) {
	r := Result{Name: "B9 drain"}
	if nodes < 2 {
		return r, fmt.Errorf("bench: B9 needs >= 2 nodes, got %d", nodes)
	}
	root := e.newRoot("b9")
	defer e.cleanup(context.WithoutCancel(ctx), root, root+"-baseline")
	e.logf("B9: placing %d channels on %d nodes", channels, nodes)
	f, rc, chs, err := e.recordedFleet(ctx, root, "b9", channels, nodes)
	if err != nil {
		return r, err
	}
	defer f.close()
	i, n := f.busiest()
	id := f.nodes[i].n.ID()
	e.logf("B9: draining node %d (%d channels)", id, n)
	rev0, err := e.revision(ctx)
	if err != nil {
		return r, err
	}
	start := time.Now()
	if err := session.Drain(ctx, f.admin, id); err != nil {
		return r, err
	}
	if err := f.tr.wait(ctx, func(t *tracker) bool { return t.watchedExcept(id) == channels }); err != nil {
		return r, fmt.Errorf("bench: B9: drain: %w", err)
	}
	r.ChanwatchS = time.Since(start).Seconds()
	rev1, err := e.revision(ctx)
	if err != nil {
		return r, err
	}
	h := rc.since(start)
	if err := h.check(chs); err != nil {
		return r, err
	}
	r.N = n
	r.EtcdWrites = rev1 - rev0 - 1
	base, err := e.putBaseline(ctx, root+"-baseline", 4*n, nodes-1, ackValue(0))
	if err != nil {
		return r, err
	}
	r.BaselineS = base.Seconds()
	within := "met"
	if r.ChanwatchS > 2 {
		within = "NOT met"
	}
	r.finish("<= 1.0", 1.0, fmt.Sprintf("drain %.3f s (goal <= 2 s: %s)", r.ChanwatchS, within), h.summary(), h.parts(),
		fmt.Sprintf("%d channels on %d nodes; node %d's %d drained; baseline %d puts from %d clients", channels, nodes, id, n, 4*n, nodes-1))
	return r, nil
}

// RollingRestart is B10: nodes nodes hold channels; each node in turn is
// stopped gracefully (nodewatch.Stop: mark stopping, drain, revoke) and a
// new one started in its place (a new ID, as the MEP wants), waiting
// between restarts until the cluster has settled (every channel Watched,
// node counts within 1 of each other). Reported: moves per channel over the
// whole restart (goal <= 2), each channel's total and the p99 gap, overlap
// (0) and lost (0). ChanwatchS is the restart's wall time; the baseline is 4
// sequential puts per move (p50 of B8's baseline rounds) times the moves of
// one node's drain and rejoin: the floor of doing them one after another.
func RollingRestart(ctx context.Context, e *Env, channels, nodes int) (Result, error) {
	r := Result{Name: "B10 rolling restart"}
	if nodes < 2 {
		return r, fmt.Errorf("bench: B10 needs >= 2 nodes, got %d", nodes)
	}
	root := e.newRoot("b10")
	defer e.cleanup(context.WithoutCancel(ctx), root, root+"-baseline")
	e.logf("B10: placing %d channels on %d nodes", channels, nodes)
	f, rc, chs, err := e.recordedFleet(ctx, root, "b10", channels, nodes)
	if err != nil {
		return r, err
	}
	defer f.close()
	settled := func(t *tracker) bool {
		if t.watched != channels {
			return false
		}
		lo, hi := math.MaxInt, 0
		for id := range t.live {
			c := t.watchedOn[id]
			lo, hi = min(lo, c), max(hi, c)
		}
		return hi-lo <= 1
	}
	if err := f.tr.wait(ctx, settled); err != nil {
		return r, fmt.Errorf("bench: B10: initial balance: %w", err)
	}
	rev0, err := e.revision(ctx)
	if err != nil {
		return r, err
	}
	start := time.Now()
	for i := range nodes {
		fn := f.nodes[i]
		id := fn.n.ID()
		e.logf("B10: restarting node %d (%d/%d)", id, i+1, nodes)
		if err := fn.n.Stop(ctx); err != nil {
			return r, fmt.Errorf("bench: B10: stop node %d: %w", id, err)
		}
		if err := <-fn.done; err != nil {
			return r, fmt.Errorf("bench: B10: node %d: %w", id, err)
		}
		fn.done <- nil // close waits on it
		if err := f.addNodes(ctx, 1); err != nil {
			return r, err
		}
		if err := f.tr.wait(ctx, func(t *tracker) bool { return !t.live[id] && settled(t) }); err != nil {
			return r, fmt.Errorf("bench: B10: settling after node %d: %w", id, err)
		}
	}
	r.ChanwatchS = time.Since(start).Seconds()
	rev1, err := e.revision(ctx)
	if err != nil {
		return r, err
	}
	h := rc.since(start)
	if err := h.check(chs); err != nil {
		return r, err
	}
	r.N = channels
	r.EtcdWrites = rev1 - rev0
	base, err := e.seqPutBaseline(ctx, root+"-baseline", 200, 4)
	if err != nil {
		return r, err
	}
	r.BaselineS = quantile(base, 0.5).Seconds() * float64(h.moves) / float64(nodes)
	per := make([]time.Duration, 0, len(chs))
	var total time.Duration
	for _, ch := range chs {
		per = append(per, h.perChan[ch])
		total += h.perChan[ch]
	}
	slices.Sort(per)
	perChannel := float64(h.moves) / float64(channels)
	r.Ratio = perChannel / 2
	r.finish("<= 1.0 (moves per channel <= 2)", 1.0,
		fmt.Sprintf("moves per channel %.3f (%d moves)", perChannel, h.moves),
		fmt.Sprintf("gap per channel over the restart: mean %.1f ms, p99 %.1f ms, max %.1f ms", ms(total/time.Duration(len(chs))), ms(quantile(per, 0.99)), ms(quantile(per, 1))),
		h.summary(), h.parts(),
		fmt.Sprintf("%d channels on %d nodes, each stopped and replaced in turn in %.1f s; baseline: 4 sequential puts per move of one node's restart", channels, nodes, r.ChanwatchS))
	return r, nil
}
