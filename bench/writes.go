package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/chanwatch/chanwatch/session"
)

// Writes is B7: etcd writes per placement, per failover move and per live
// move, on one fleet of nodes nodes: channels are registered and placed;
// then the busiest node crashes and its lease is revoked (failover moves);
// then the next busiest is drained with session.Drain (live moves: ToRelease,
// Released, delete + ToWatch, Watched). Writes are revision deltas of each
// phase, minus the bench's own (registration txns, the revoke, the drain
// mark). Ratio is the worse of placement/2 and live move/4 (the MEP's
// minimum per placement and Milvus's live move); N is the channels live
// moved; the times are the live move's and a baseline of 4 single-key
// puts per live-moved channel from the nodes left.
func Writes(ctx context.Context, e *Env, channels, nodes int) (Result, error) {
	r := Result{Name: "B7 writes"}
	if nodes < 3 {
		return r, fmt.Errorf("bench: B7 needs >= 3 nodes, got %d", nodes)
	}
	root := e.newRoot("b7")
	defer e.cleanup(context.WithoutCancel(ctx), root, root+"-baseline")
	f, err := e.newFleet(ctx, root, nodes)
	if err != nil {
		return r, err
	}
	defer f.close()

	e.logf("B7: placing %d channels on %d nodes", channels, nodes)
	rev0, err := e.revision(ctx)
	if err != nil {
		return r, err
	}
	regTxns, err := register(ctx, f.admin, channelSpecs("b7", channels, 0))
	if err != nil {
		return r, err
	}
	if err := f.tr.wait(ctx, func(t *tracker) bool { return t.watched == channels }); err != nil {
		return r, fmt.Errorf("bench: B7: placement: %w", err)
	}
	rev1, err := e.revision(ctx)
	if err != nil {
		return r, err
	}
	placement := float64(rev1-rev0-regTxns) / float64(channels)

	if err := f.waitMovable(ctx); err != nil {
		return r, err
	}
	victim, failed := f.busiest()
	deadID, lease, err := f.crash(ctx, victim)
	if err != nil {
		return r, err
	}
	e.logf("B7: failover of node %d's %d channels", deadID, failed)
	rev0, err = e.revision(ctx)
	if err != nil {
		return r, err
	}
	if err := f.admin.Revoke(ctx, lease); err != nil {
		return r, err
	}
	if err := f.tr.wait(ctx, func(t *tracker) bool { return t.watchedExcept(deadID) == channels }); err != nil {
		return r, fmt.Errorf("bench: B7: failover: %w", err)
	}
	rev1, err = e.revision(ctx)
	if err != nil {
		return r, err
	}
	failover := float64(rev1-rev0-1) / float64(failed)

	drainee, moved := f.busiest()
	drainID := f.nodes[drainee].n.ID()
	e.logf("B7: draining node %d's %d channels", drainID, moved)
	rev0, err = e.revision(ctx)
	if err != nil {
		return r, err
	}
	start := time.Now()
	if err := session.Drain(ctx, f.admin, drainID); err != nil {
		return r, err
	}
	if err := f.tr.wait(ctx, func(t *tracker) bool { return t.watchedExcept(deadID, drainID) == channels }); err != nil {
		return r, fmt.Errorf("bench: B7: drain: %w", err)
	}
	r.ChanwatchS = time.Since(start).Seconds()
	rev1, err = e.revision(ctx)
	if err != nil {
		return r, err
	}
	r.N = moved
	r.EtcdWrites = rev1 - rev0 - 1 // the drain mark is the operator's
	live := float64(r.EtcdWrites) / float64(moved)

	base, err := e.putBaseline(ctx, root+"-baseline", 4*moved, nodes-2, ackValue(0))
	if err != nil {
		return r, err
	}
	r.BaselineS = base.Seconds()
	r.Ratio = max(placement/2, live/4)
	r.finish("<= 1.0 (placement <= 2 and live move <= 4 writes)", 1.0,
		fmt.Sprintf("writes per placement %.3f (goal <= 2), per failover move %.3f, per live move %.3f (goal <= 4)", placement, failover, live),
		fmt.Sprintf("%d channels on %d nodes; %d failed over, %d live moved; times: the drain and 4 puts per moved channel from %d clients",
			channels, nodes, failed, moved, nodes-2))
	return r, nil
}
