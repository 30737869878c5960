package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/chanwatch/chanwatch/meta"
)

// ackValue is a ChannelInfo-sized value for baseline puts: the same bytes
// an assignment or an ack writes.
func ackValue(payload int) []byte {
	v, err := meta.EncodeChannelInfo(meta.ChannelInfo{Name: "ch-0000000", CollectionID: 1, State: meta.Watched,
		StartTime: time.Now(), AssignRevision: 123456, Vchannel: payloadJSON(payload)})
	if err != nil {
		panic(err) // a constant value: cannot fail
	}
	return v
}

// Assign is B1: channels registered onto nodes in-process nodes (no-op
// handler), timed from the first registration txn until the store holds
// every channel Watched. The registrations (create-only, in txns of
// MaxTxnOps) are the user's input, not chanwatch's work: they are timed
// but not counted as chanwatch's writes. Baseline: 2 single-key puts per
// channel (one assignment, one ack) from nodes concurrent raw clients, run
// before and after chanwatch (the mean counts).
func Assign(ctx context.Context, e *Env, channels, nodes int) (Result, error) {
	r := Result{Name: "B1 assign", N: channels}
	root := e.newRoot("b1")
	defer e.cleanup(context.WithoutCancel(ctx), root, root+"-baseline", root+"-baseline2")

	e.logf("B1: baseline: %d puts from %d clients", 2*channels, nodes)
	base, err := e.putBaseline(ctx, root+"-baseline", 2*channels, nodes, ackValue(0))
	if err != nil {
		return r, err
	}

	e.logf("B1: starting a coordinator and %d nodes", nodes)
	f, err := e.newFleet(ctx, root, nodes)
	if err != nil {
		return r, err
	}
	defer f.close()
	specs := channelSpecs("b1", channels, 0)
	e.logf("B1: registering %d channels", channels)
	rev0, err := e.revision(ctx)
	if err != nil {
		return r, err
	}
	start := time.Now()
	regTxns, err := register(ctx, f.admin, specs)
	if err != nil {
		return r, err
	}
	regTook := time.Since(start)
	e.logf("B1: registration (%d txns) took %v", regTxns, regTook)
	if err := f.tr.wait(ctx, func(t *tracker) bool { return t.watched == channels }); err != nil {
		return r, fmt.Errorf("bench: B1: waiting for %d Watched: %w", channels, err)
	}
	r.ChanwatchS = time.Since(start).Seconds()
	rev1, err := e.revision(ctx)
	if err != nil {
		return r, err
	}
	r.EtcdWrites = rev1 - rev0 - regTxns

	// The same baseline again, after: the mean of before and after
	// cancels a drift of the machine's speed during the run.
	e.logf("B1: baseline again")
	base2, err := e.putBaseline(ctx, root+"-baseline2", 2*channels, nodes, ackValue(0))
	if err != nil {
		return r, err
	}
	r.BaselineS = (base + base2).Seconds() / 2
	r.finish("<= 1.0 (moonshot 0.5)", 1.0,
		fmt.Sprintf("%d nodes; %.0f channels/s; baseline %d puts from %d clients; %d registration txns timed (%.3f s of it), not counted",
			nodes, float64(channels)/r.ChanwatchS, 2*channels, nodes, regTxns, regTook.Seconds()),
		fmt.Sprintf("placement writes per channel %.3f (MEP minimum 2)", float64(r.EtcdWrites)/float64(channels)))
	return r, nil
}
