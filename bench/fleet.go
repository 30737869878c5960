package bench

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/chanwatch/chanwatch/channelmgr"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/nodewatch"
	"github.com/chanwatch/chanwatch/session"
)

// nodeTTL is the session TTL of the benchmark's nodes and the coordinator's
// WithNodeTTL. Failover is triggered by revoking a lease, so the TTL does
// not enter any figure; it only bounds how long a fresh coordinator waits
// before it may move a gone node's channels (DESIGN §3), which B2 and B7
// wait out before they measure. Runs below smokeBelow use etcd's minimum
// (tinyTTL) to shorten that wait.
const (
	nodeTTL    = 3 * time.Second
	tinyTTL    = 2 * time.Second
	smokeBelow = 0.05
)

// noop is the no-op Handler of every scenario: what is measured is the
// coordination, not the user's work.
type noop struct{}

func (noop) Watch(context.Context, meta.ChannelInfo) error { return nil }
func (noop) Release(context.Context, string) error         { return nil }

// fleet is a coordinator and nodes in this process, each its own etcd
// client, on one root, with a tracker watching the root.
type fleet struct {
	e     *Env
	root  string
	admin *proc
	tr    *tracker

	coord      *channelmgr.Coordinator
	coordProc  *proc
	coordStop  context.CancelFunc
	coordDone  chan error
	leadingAt  time.Time
	nodes      []*fnode
	handler    func(idx int) nodewatch.Handler // nil: noop
	hook       func(ch string, st meta.State, at time.Time)
	wg         sync.WaitGroup
	runCtx     context.Context
	cancelRuns context.CancelFunc
}

type fnode struct {
	n       *nodewatch.Node
	p       *proc
	cancel  context.CancelFunc
	done    chan error
	crashed bool
}

// newFleet starts a tracker, a coordinator and n nodes on root, and returns
// once the coordinator leads and every node is registered.
func (e *Env) newFleet(ctx context.Context, root string, n int, copts ...channelmgr.Option) (_ *fleet, err error) {
	return e.newFleetWith(ctx, root, n, nil, copts...)
}

// newFleetWith is newFleet whose nodes record their handler calls, and
// whose tracker its observations, in rc (nil: the no-op handler).
func (e *Env) newFleetWith(ctx context.Context, root string, n int, rc *recorder, copts ...channelmgr.Option) (_ *fleet, err error) {
	f := &fleet{e: e, root: root}
	if rc != nil {
		f.handler, f.hook = rc.handler, rc.observe
	}
	f.runCtx, f.cancelRuns = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			f.close()
		}
	}()
	if f.admin, err = e.open(root); err != nil {
		return nil, err
	}
	if f.tr, err = startTracker(f.runCtx, f.admin, f.hook); err != nil {
		return nil, err
	}
	if f.coordProc, err = e.open(root); err != nil {
		return nil, err
	}
	opts := append([]channelmgr.Option{channelmgr.WithID("bench-coordinator"), channelmgr.WithLogger(e.opts.Logger.Named("coord")),
		channelmgr.WithSessionTTL(e.nodeTTL), channelmgr.WithNodeTTL(e.nodeTTL)}, copts...)
	if f.coord, err = channelmgr.New(f.coordProc, opts...); err != nil {
		return nil, err
	}
	cctx, cancel := context.WithCancel(f.runCtx)
	f.coordStop, f.coordDone = cancel, make(chan error, 1)
	go func() { f.coordDone <- f.coord.Run(cctx) }()
	if err := pollUntil(ctx, f.coord.IsLeader); err != nil {
		return nil, fmt.Errorf("bench: coordinator never led: %w", err)
	}
	f.leadingAt = time.Now()
	if err := f.addNodes(ctx, n); err != nil {
		return nil, err
	}
	return f, nil
}

// addNodes starts n more nodes and waits until their sessions exist.
func (f *fleet) addNodes(ctx context.Context, n int) error {
	var added []*fnode
	for range n {
		p, err := f.e.open(f.root)
		if err != nil {
			return err
		}
		var h nodewatch.Handler = noop{}
		if f.handler != nil {
			h = f.handler(len(f.nodes))
		}
		nw, err := nodewatch.New(p, h, nodewatch.WithSessionTTL(f.e.nodeTTL), nodewatch.WithLogger(f.e.opts.Logger.Named("node")))
		if err != nil {
			p.Close()
			return err
		}
		nctx, cancel := context.WithCancel(f.runCtx)
		fn := &fnode{n: nw, p: p, cancel: cancel, done: make(chan error, 1)}
		f.nodes = append(f.nodes, fn)
		added = append(added, fn)
		go func() { fn.done <- nw.Run(nctx) }()
	}
	return f.tr.wait(ctx, func(t *tracker) bool {
		for _, fn := range added {
			if id := fn.n.ID(); id == 0 || !t.live[id] {
				return false
			}
		}
		return true
	})
}

// close stops every node and the coordinator (their Runs revoke their
// leases) and closes every handle.
func (f *fleet) close() {
	if f.coordStop != nil {
		f.coordStop()
		<-f.coordDone
	}
	for _, fn := range f.nodes {
		fn.cancel()
	}
	for _, fn := range f.nodes {
		// A crashed node's Run returns by itself once its session fences
		// (within a TTL); waiting for it would only slow the run down.
		if !fn.crashed {
			<-fn.done
			fn.p.Close()
		}
	}
	f.cancelRuns()
	if f.tr != nil {
		f.tr.stop()
	}
	if f.coordProc != nil {
		f.coordProc.Close()
	}
	if f.admin != nil {
		f.admin.Close()
	}
}

// crash closes node i's connection, as a killed process would lose it, and
// returns its ID and lease: the lease lives on until revoked or expired.
func (f *fleet) crash(ctx context.Context, i int) (int64, kv.LeaseID, error) {
	fn := f.nodes[i]
	id := fn.n.ID()
	members, _, err := session.ListNodes(ctx, f.admin)
	if err != nil {
		return 0, 0, err
	}
	var lease kv.LeaseID
	for _, m := range members {
		if m.ID == id {
			lease = m.Lease
		}
	}
	if lease == kv.NoLease {
		return 0, 0, fmt.Errorf("bench: node %d has no session", id)
	}
	fn.crashed = true
	// Run notices the closed backend only when its session fences itself
	// (it cannot renew): close waits for that, the measurement does not.
	fn.p.Close()
	return id, lease, nil
}

// busiest returns the index of the node with the most Watched channels
// among those not crashed and not in except, and that count.
func (f *fleet) busiest(except ...int64) (int, int) {
	counts := f.tr.snapshot()
	best, most := -1, -1
	for i, fn := range f.nodes {
		if fn.crashed || slices.Contains(except, fn.n.ID()) {
			continue
		}
		if c := counts[fn.n.ID()]; c > most {
			best, most = i, c
		}
	}
	return best, most
}

// waitMovable waits until the coordinator has led for longer than a node
// TTL: before that it holds back the channels of nodes that vanish, in case
// its predecessor had just evicted them (DESIGN §3). A measurement of
// failover must not include that one-off wait.
func (f *fleet) waitMovable(ctx context.Context) error {
	t := time.NewTimer(time.Until(f.leadingAt.Add(f.e.nodeTTL + 100*time.Millisecond)))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// pollUntil polls cond every 5ms until it holds or ctx ends (for state
// that has no event, such as IsLeader).
func pollUntil(ctx context.Context, cond func() bool) error {
	tk := time.NewTicker(5 * time.Millisecond)
	defer tk.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tk.C:
		}
	}
	return nil
}

// channelSpecs returns n channels, eight per collection (a Milvus
// collection's shard count), with a payload of the given size.
func channelSpecs(prefix string, n, payload int) []meta.ChannelSpec {
	specs := make([]meta.ChannelSpec, n)
	vc := payloadJSON(payload)
	for i := range specs {
		specs[i] = meta.ChannelSpec{Name: fmt.Sprintf("%s-%07d", prefix, i), CollectionID: int64(i/8 + 1), Vchannel: vc}
	}
	return specs
}

// payloadJSON returns a JSON object of exactly n bytes (nil for n < 8).
func payloadJSON(n int) []byte {
	if n < 8 {
		return nil
	}
	return []byte(`{"p":"` + strings.Repeat("x", n-8) + `"}`)
}

// register writes the registry keys of specs, create-only as
// channelmgr.Register does, but in txns of MaxTxnOps keys, and returns the
// number of txns.
func register(ctx context.Context, b kv.KV, specs []meta.ChannelSpec) (int64, error) {
	step := b.MaxTxnOps()
	var txns int64
	for i := 0; i < len(specs); i += step {
		var t kv.Txn
		for _, s := range specs[i:min(i+step, len(specs))] {
			val, err := meta.EncodeChannelSpec(s)
			if err != nil {
				return txns, err
			}
			key := meta.RegistryKey(s.Name)
			t.If = append(t.If, kv.CmpMissing(key))
			t.Then = append(t.Then, kv.OpPut(key, val))
		}
		resp, err := b.Txn(ctx, t)
		if err != nil {
			return txns, fmt.Errorf("bench: register: %w", err)
		}
		if !resp.Succeeded {
			return txns, fmt.Errorf("bench: register: a channel of batch %d is already registered", i/step)
		}
		txns++
	}
	return txns, nil
}
