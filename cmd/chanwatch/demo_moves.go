package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/chanwatch/chanwatch/audit"
)

// moveGaps summarises the planned moves the recorder saw after sequence
// number since: per move, the time from the old node's Release returning
// to the new node's Watch returning (the channel ran nowhere meanwhile).
func (d *demo) moveGaps(since int64) string {
	released := map[string]audit.HandlerEvent{} // channel -> last successful ReleaseEnd
	var gaps []time.Duration
	for _, e := range d.rec.Events() {
		switch {
		case e.Kind == audit.ReleaseEnd && e.Err == nil:
			released[e.Channel] = e
		case e.Kind == audit.WatchEnd && e.Err == nil && e.Seq > since:
			if r, ok := released[e.Channel]; ok && r.Seq > since && r.Node != e.Node {
				gaps = append(gaps, e.Time.Sub(r.Time))
			}
			delete(released, e.Channel)
		}
	}
	if len(gaps) == 0 {
		return "-"
	}
	slices.Sort(gaps)
	q := func(f float64) time.Duration { return gaps[min(len(gaps)-1, int(f*float64(len(gaps))))] }
	r := func(t time.Duration) string { return t.Round(100 * time.Microsecond).String() }
	return fmt.Sprintf("%d moves, gap p50 %s p99 %s max %s", len(gaps), r(q(0.5)), r(q(0.99)), r(gaps[len(gaps)-1]))
}

// rollingRestart stops each healthy node in turn gracefully and starts a
// new one in its place, waiting for the cluster to settle and spread in
// between: the MEP's rolling upgrade.
func (d *demo) rollingRestart(ctx context.Context, wg *sync.WaitGroup) error {
	var todo []*demoNode
	for _, n := range d.nodes {
		if !n.gone && !n.failing {
			todo = append(todo, n)
		}
	}
	since := d.rec.Seq()
	start := time.Now()
	for i, n := range todo {
		id := n.node.ID()
		stopped := make(chan error, 1)
		go func() {
			sctx, c := context.WithTimeout(ctx, d.cfg.timeout)
			defer c()
			stopped <- n.node.Stop(sctx)
		}()
		var stopErr error
		done := false
		var fresh *demoNode
		err := d.phaseQuiet(fmt.Sprintf("restart node %d (%d/%d)", id, i+1, len(todo)), func() (bool, string) {
			if !done {
				select {
				case stopErr = <-stopped:
					done = true
					<-n.done
					n.gone = true
				default:
					return false, fmt.Sprintf("node %d draining", id)
				}
			}
			if stopErr != nil {
				return true, ""
			}
			if fresh == nil {
				var err error
				if fresh, err = d.startNode(ctx, wg, false); err != nil {
					stopErr = err
					return true, ""
				}
			}
			ok, s := d.converged()
			if _, live := d.checker.View().Live[fresh.node.ID()]; !ok || !live {
				return false, s
			}
			lo, hi := d.spread()
			return hi-lo <= 1, fmt.Sprintf("%s, node loads %d..%d", s, lo, hi)
		})
		if err != nil {
			return err
		}
		if stopErr != nil {
			return fmt.Errorf("restart node %d: %w", id, stopErr)
		}
	}
	d.phases = append(d.phases, demoPhase{name: fmt.Sprintf("rolling restart (%d)", len(todo)), took: time.Since(start), gaps: d.moveGaps(since)})
	fmt.Fprintf(d.out, "  %-22s done in %-8s %s\n", "rolling restart", time.Since(start).Round(time.Millisecond), d.phases[len(d.phases)-1].gaps)
	return nil
}

// phaseQuiet is phase without an entry in the phase table.
func (d *demo) phaseQuiet(name string, cond func() (bool, string)) error {
	err := d.phase(name, cond)
	if err == nil {
		d.phases = d.phases[:len(d.phases)-1]
	}
	return err
}
