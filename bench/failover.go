package bench

import (
	"context"
	"fmt"
	"time"
)

// Failover is B2: nodes hold channels (all Watched); one node's process
// crashes (its connection closes) and its lease is revoked. Timed from the
// revoke (which writes the session DELETE) until every channel of that node
// is Watched elsewhere, less the one node TTL the protocol must wait after a
// lease vanishes before anything of the node may start elsewhere (the node
// may run its channels until its own fence deadline; see channelmgr): the
// figure is the coordinator's own work. N is the number of channels moved. Writes are
// counted after the DELETE. Baseline: 2 single-key puts per moved channel
// from nodes-1 concurrent raw clients, before and after (the mean counts).
func Failover(ctx context.Context, e *Env, channels, nodes int) (Result, error) {
	r := Result{Name: "B2 failover"}
	if nodes < 2 {
		return r, fmt.Errorf("bench: B2 needs >= 2 nodes, got %d", nodes)
	}
	root := e.newRoot("b2")
	defer e.cleanup(context.WithoutCancel(ctx), root, root+"-baseline", root+"-baseline2")

	e.logf("B2: placing %d channels on %d nodes", channels, nodes)
	f, err := e.newFleet(ctx, root, nodes)
	if err != nil {
		return r, err
	}
	defer f.close()
	if _, err := register(ctx, f.admin, channelSpecs("b2", channels, 0)); err != nil {
		return r, err
	}
	if err := f.tr.wait(ctx, func(t *tracker) bool { return t.watched == channels }); err != nil {
		return r, fmt.Errorf("bench: B2: initial placement: %w", err)
	}
	victim, moved := f.busiest()
	// The baseline runs while the fleet idles, before the wait below.
	e.logf("B2: baseline: %d puts from %d clients", 2*moved, nodes-1)
	base, err := e.putBaseline(ctx, root+"-baseline", 2*moved, nodes-1, ackValue(0))
	if err != nil {
		return r, err
	}
	if err := f.waitMovable(ctx); err != nil {
		return r, err
	}
	id, lease, err := f.crash(ctx, victim)
	if err != nil {
		return r, err
	}
	r.N = moved
	e.logf("B2: node %d (%d channels) crashed; revoking its lease", id, moved)
	rev0, err := e.revision(ctx)
	if err != nil {
		return r, err
	}
	start := time.Now()
	if err := f.admin.Revoke(ctx, lease); err != nil {
		return r, fmt.Errorf("bench: B2: revoke: %w", err)
	}
	if err := f.tr.wait(ctx, func(t *tracker) bool { return t.watchedExcept(id) == channels }); err != nil {
		return r, fmt.Errorf("bench: B2: waiting for failover: %w", err)
	}
	total := time.Since(start)
	r.ChanwatchS = (total - e.nodeTTL).Seconds()
	e.logf("B2: %v from the revoke, of which %v is the fence wait", total, e.nodeTTL)
	rev1, err := e.revision(ctx)
	if err != nil {
		return r, err
	}
	r.EtcdWrites = rev1 - rev0 - 1 // the revoke's DELETE is the fault, not the cure
	base2, err := e.putBaseline(ctx, root+"-baseline2", 2*moved, nodes-1, ackValue(0))
	if err != nil {
		return r, err
	}
	r.BaselineS = (base + base2).Seconds() / 2

	r.finish("<= 0.8", 0.8, fmt.Sprintf("%d channels on %d nodes; node %d's %d channels moved to %d nodes",
		channels, nodes, id, moved, nodes-1))
	return r, nil
}
