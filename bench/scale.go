package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/chanwatch/chanwatch/channelmgr"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
)

// Scale is B12, the scale run (make bench-scale; not in the default set):
// one embedded etcd, a real coordinator, and a simulated fleet of nodes
// that writes exactly what nodewatch writes (a session key on its own
// lease, then one compare-and-swap txn per answer: Watched for a ToWatch,
// Released for a ToRelease) but runs no handler and no per-channel
// goroutine, so that 10,000 nodes fit beside the store on two cores.
//
// Figures, all in one run:
//   - placement: channels registered (create-only txns of MaxTxnOps, as B1)
//     until all are Watched, against B1's rate measured first in the same
//     run (10,000 channels on 100 real nodes): the ratio is B1's channels/s
//     over this run's; goal <= 1.0.
//   - cold start: the coordinator is restarted and timed until its view
//     counts every channel Watched, against a raw list of the root in one
//     RangeStream (B3 also pages; at this size pages cost etcd a count of
//     the rest of the range each); goal <= 1.2.
//   - heap: the restarted coordinator's live heap growth (as B5); goal
//     <= 1 GiB.
//   - failover: one node's channels after its lease is revoked, from the
//     session key's deletion until all are Watched elsewhere, less the node
//     TTL the protocol waits (as B2); goal <= 1 s.
//   - etcd: the database size after compaction and defragmentation.
//
// The Result's ratio is the placement figure; Figures holds the rest, and
// Notes says which goals were met.
func Scale(ctx context.Context, e *Env, channels, nodes int) (Result, error) {
	r := Result{Name: "B12 scale", N: channels, Figures: map[string]float64{}}
	refN, refNodes := 10000, 100
	if e.opts.Scale < 1 {
		refN, refNodes = scaled(10000, e.opts.Scale, 20), nodesAt(100, e.opts.Scale, 4)
	}
	e.logf("B12: reference placement rate: B1 with %d channels on %d nodes", refN, refNodes)
	ref, err := Assign(ctx, e, refN, refNodes)
	if err != nil {
		return r, err
	}
	refRate := float64(refN) / ref.ChanwatchS

	root := e.newRoot("b12")
	defer e.cleanup(context.WithoutCancel(ctx), root)
	admin, err := e.open(root)
	if err != nil {
		return r, err
	}
	defer admin.Close()
	e.logf("B12: starting %d simulated nodes", nodes)
	sf, err := startSimFleet(ctx, e, root, nodes)
	if err != nil {
		return r, err
	}
	defer sf.stop()
	tr, err := startTracker(ctx, admin, nil)
	if err != nil {
		return r, err
	}
	defer tr.stop()

	p, err := e.open(root)
	if err != nil {
		return r, err
	}
	// The coordinator's session has the fleet's TTL too: at 1,000,000
	// channels its process (etcd and the fleet share it) pauses for GC and
	// passes of seconds, and with B1's 3 s its session was fenced in the
	// failover step, which then timed a new term's cold start instead.
	coordTTL := channelmgr.WithSessionTTL(sf.ttl)
	co, err := startCoordinator(p, e, coordTTL)
	if err != nil {
		p.Close()
		return r, err
	}
	if err := pollUntil(ctx, co.c.IsLeader); err != nil {
		co.stop()
		p.Close()
		return r, err
	}
	e.logf("B12: registering %d channels", channels)
	rev0, err := e.revision(ctx)
	if err != nil {
		return r, err
	}
	start := time.Now()
	regTxns, err := register(ctx, admin, channelSpecs("s", channels, 0))
	if err != nil {
		co.stop()
		p.Close()
		return r, err
	}
	regTook := time.Since(start)
	e.logf("B12: registration (%d txns) took %v", regTxns, regTook)
	if err := tr.waitProgress(ctx, e, "B12: Watched", channels, sf.lostLease); err != nil {
		co.stop()
		p.Close()
		return r, fmt.Errorf("bench: B12: waiting for %d Watched: %w", channels, err)
	}
	placeTook := time.Since(start)
	rev1, err := e.revision(ctx)
	if err != nil {
		return r, err
	}
	r.EtcdWrites = rev1 - rev0 - regTxns
	rate := float64(channels) / placeTook.Seconds()
	e.logf("B12: %d channels Watched in %v (%.0f channels/s; B1 %.0f channels/s)", channels, placeTook, rate, refRate)
	co.stop()
	p.Close()

	// The raw list is one RangeStream: pages of 1,000 make etcd count the
	// rest of the range for each (about 2,000 walks of 2,000,000 keys,
	// which ran past 9 minutes), and etcdkv streams too.
	e.logf("B12: cold start: raw streamed list first")
	listTook, keys, err := e.streamBaseline(ctx, root)
	if err != nil {
		return r, err
	}
	p2, err := e.open(root)
	if err != nil {
		return r, err
	}
	defer p2.Close()
	if _, _, err := p2.Get(ctx, meta.CoordinatorKey); err != nil && !isNotFound(err) {
		return r, err
	}
	heap0 := steadyHeap()
	start = time.Now()
	co2, err := startCoordinator(p2, e, coordTTL)
	if err != nil {
		return r, err
	}
	defer co2.stop()
	if err := co2.waitWatched(ctx, channels); err != nil {
		return r, fmt.Errorf("bench: B12: cold coordinator never reconciled %d channels: %w", channels, err)
	}
	cold := time.Since(start)
	heap1 := steadyHeap()
	runtime.KeepAlive(co2)
	heap := float64(0)
	if heap1 > heap0 {
		heap = float64(heap1 - heap0)
	}
	e.logf("B12: cold start %v (raw list of %d keys %v), heap %.0f MiB", cold, keys, listTook, heap/(1<<20))
	if err := pollUntil(ctx, func() bool { return time.Since(start) > e.nodeTTL+sf.ttl }); err != nil {
		return r, err // a new leader waits one node TTL before moving anything
	}

	victim, held := tr.busiestNode()
	lease := sf.crash(victim)
	e.logf("B12: node %d (%d channels) crashed; revoking its lease", victim, held)
	start = time.Now()
	if err := admin.Revoke(ctx, lease); err != nil {
		return r, fmt.Errorf("bench: B12: revoke: %w", err)
	}
	if err := tr.wait(ctx, func(t *tracker) bool { return t.watchedExcept(victim) == channels }); err != nil {
		return r, fmt.Errorf("bench: B12: waiting for failover: %w", err)
	}
	failTook := time.Since(start) - sf.ttl

	dbBefore, dbAfter, err := e.compactAndDefrag(ctx)
	if err != nil {
		return r, err
	}

	r.ChanwatchS, r.BaselineS = placeTook.Seconds(), float64(channels)/refRate
	r.Ratio = refRate / rate
	r.Figures = map[string]float64{
		"placement_channels_per_s": rate, "b1_channels_per_s": refRate, "registration_s": regTook.Seconds(),
		"cold_start_s": cold.Seconds(), "raw_list_s": listTook.Seconds(), "cold_start_ratio": cold.Seconds() / listTook.Seconds(),
		"heap_bytes": heap, "heap_bytes_per_channel": heap / float64(channels),
		"failover_s": failTook.Seconds(), "failover_channels": float64(held),
		"etcd_db_bytes": float64(dbBefore), "etcd_db_bytes_defragmented": float64(dbAfter),
	}
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	r.finish("<= 1.0 (B1's channels/s over ours)", 1.0,
		fmt.Sprintf("%d channels on %d simulated nodes; %.0f channels/s against B1's %.0f (registration %.1f s of it)", channels, nodes, rate, refRate, regTook.Seconds()),
		fmt.Sprintf("cold start %.2f s against a raw streamed list of %d keys in %.2f s: ratio %.2f, goal <= 1.2 %s", cold.Seconds(), keys, listTook.Seconds(), cold.Seconds()/listTook.Seconds(), verdict(cold.Seconds()/listTook.Seconds() <= 1.2)),
		fmt.Sprintf("coordinator heap %.0f MiB (%.0f B/channel), goal <= 1 GiB %s", heap/(1<<20), heap/float64(channels), verdict(heap <= 1<<30)),
		fmt.Sprintf("failover of node %d's %d channels %.3f s after its %v TTL, goal <= 1 s %s", victim, held, failTook.Seconds(), sf.ttl, verdict(failTook <= time.Second)),
		fmt.Sprintf("etcd db %.0f MiB, %.0f MiB after compaction and defragmentation", float64(dbBefore)/(1<<20), float64(dbAfter)/(1<<20)))
	return r, nil
}

// compactAndDefrag compacts the embedded etcd at its revision, defragments
// it, and returns its database size before and after.
func (e *Env) compactAndDefrag(ctx context.Context) (int64, int64, error) {
	ep := e.ccfg.Endpoints[0]
	st, err := e.cli.Status(ctx, ep)
	if err != nil {
		return 0, 0, err
	}
	before := st.DbSize
	if _, err := e.cli.Compact(ctx, st.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		return 0, 0, fmt.Errorf("bench: compact: %w", err)
	}
	if _, err := e.cli.Defragment(ctx, ep); err != nil {
		return 0, 0, fmt.Errorf("bench: defragment: %w", err)
	}
	st, err = e.cli.Status(ctx, ep)
	if err != nil {
		return 0, 0, err
	}
	return before, st.DbSize, nil
}

// busiestNode returns the node with the most Watched channels, and that
// count.
func (t *tracker) busiestNode() (int64, int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var best int64
	n := -1
	for id, c := range t.watchedOn {
		if c > n || (c == n && id < best) {
			best, n = id, c
		}
	}
	return best, n
}

// simFleet is B12's simulated nodes: sessions on their own leases (kept
// alive in one loop), and one watch on the root's assignments whose
// answers a pool of workers writes, one txn of CASes per node for what it
// received while its last txn was in flight, as nodewatch batches.
type simFleet struct {
	ttl     time.Duration
	acks    []*proc // the workers' handles, one connection each
	leases  map[int64]kv.LeaseID
	crashed sync.Map // node ID -> true
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	errs    atomic.Int64
	lost    atomic.Int64 // a node whose lease expired uncrashed (see lostLease)
}

// simTTL is the simulated nodes' session TTL when there are more than
// simShortTTLNodes of them: long enough that one loop renews 10,000 leases
// in time on a loaded machine. Smaller fleets use the Env's node TTL.
const (
	simTTL           = 30 * time.Second
	simShortTTLNodes = 1000
)

// simWorkers is how many answers the fleet writes at once (etcd batches
// concurrent txns into one raft proposal and fsync, so more in flight is
// more acks per second, up to the store's ceiling).
const simWorkers = 128

func startSimFleet(ctx context.Context, e *Env, root string, nodes int) (*simFleet, error) {
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	sf := &simFleet{ttl: e.nodeTTL, leases: map[int64]kv.LeaseID{}, cancel: cancel}
	if nodes > simShortTTLNodes {
		sf.ttl = simTTL
	}
	ok := false
	defer func() {
		if !ok {
			sf.stop()
		}
	}()
	for range 8 {
		p, err := e.open(root)
		if err != nil {
			return nil, err
		}
		sf.acks = append(sf.acks, p)
	}
	b := sf.acks[0]
	// Leases, granted from several connections at once.
	ids := make(chan int64)
	var mu sync.Mutex
	var gerr error
	var gwg sync.WaitGroup
	for _, p := range sf.acks {
		gwg.Go(func() {
			for id := range ids {
				l, err := p.Grant(ctx, sf.ttl)
				mu.Lock()
				if err != nil && gerr == nil {
					gerr = err
				}
				sf.leases[id] = l
				mu.Unlock()
			}
		})
	}
	for id := int64(1); id <= int64(nodes); id++ {
		ids <- id
	}
	close(ids)
	gwg.Wait()
	if gerr != nil {
		return nil, fmt.Errorf("bench: B12: grant: %w", gerr)
	}
	now := time.Now()
	var ops []kv.Op
	for id := int64(1); id <= int64(nodes); id++ {
		v, err := meta.EncodeNodeSession(meta.NodeSession{ID: id, StartTime: now, State: meta.NodeServing, TTL: sf.ttl})
		if err != nil {
			return nil, err
		}
		ops = append(ops, kv.OpPutLease(meta.NodeSessionKey(id), v, sf.leases[id]))
		if len(ops) == b.MaxTxnOps() || id == int64(nodes) {
			if _, err := b.Txn(ctx, kv.Txn{Then: ops}); err != nil {
				return nil, fmt.Errorf("bench: B12: sessions: %w", err)
			}
			ops = ops[:0]
		}
	}
	if _, err := kv.Put(ctx, b, meta.NodeIDCounterKey, []byte(fmt.Sprint(nodes))); err != nil {
		return nil, err
	}
	_, rev, err := b.Get(ctx, meta.NodeIDCounterKey)
	if err != nil {
		return nil, err
	}

	sf.wg.Go(func() { sf.keepAlive(rctx) })
	// Each node's answers queue on the node; a worker takes a node with
	// answers waiting and sends all of them in one txn, and answers that
	// arrive meanwhile wait for the next: what nodewatch's acker does, one
	// txn in flight per node.
	q := newAckQueue()
	for i := range simWorkers {
		p := sf.acks[i%len(sf.acks)]
		sf.wg.Go(func() {
			for {
				node, its, ok := q.take(rctx)
				if !ok {
					return
				}
				sf.answer(rctx, p, its)
				q.done(node)
			}
		})
	}
	wch := b.Watch(rctx, meta.ChannelPrefix, rev+1)
	sf.wg.Go(func() {
		for resp := range wch {
			for _, ev := range resp.Events {
				if ev.Type != kv.EventPut {
					continue
				}
				if node, _, err := meta.ParseChannelKey(ev.KV.Key); err == nil && node != 0 {
					q.add(node, ev.KV)
				}
			}
		}
	})
	ok = true
	return sf, nil
}

// answer writes one node's answers to the assignment puts it received
// together, as nodewatch does: Watched for a ToWatch (its mod revision is
// the token), Released for a ToRelease, each a CAS on the key's mod
// revision, all in one txn (MaxTxnOps at a time). When a batch fails
// (a key moved on), each answer is sent alone, which is where nodewatch's
// resend of the keys that held would land too. A crashed node's keys, and
// keys in any other state, get nothing.
func (sf *simFleet) answer(ctx context.Context, b kv.KV, its []kv.KeyValue) {
	var cmps []kv.Cmp
	var puts []kv.Op
	for _, it := range its {
		node, _, err := meta.ParseChannelKey(it.Key)
		if err != nil || node == 0 {
			continue
		}
		if _, dead := sf.crashed.Load(node); dead {
			return
		}
		info, err := meta.DecodeChannelInfo(it.Key, it.Value)
		if err != nil {
			continue
		}
		switch info.State {
		case meta.ToWatch:
			info.AssignRevision = it.ModRevision
			info.State, info.LastError = meta.Watched, ""
		case meta.ToRelease:
			info.State = meta.Released
		default:
			continue
		}
		val, err := meta.EncodeChannelInfo(info)
		if err != nil {
			continue
		}
		cmps = append(cmps, kv.CmpModRevision(it.Key, kv.Equal, it.ModRevision))
		puts = append(puts, kv.OpPut(it.Key, val))
	}
	for len(cmps) > 0 {
		n := min(len(cmps), b.MaxTxnOps())
		resp, err := b.Txn(ctx, kv.Txn{If: cmps[:n], Then: puts[:n]})
		switch {
		case err != nil && ctx.Err() == nil:
			sf.errs.Add(1)
		case err == nil && !resp.Succeeded && n > 1:
			for i := range n {
				if _, err := b.Txn(ctx, kv.Txn{If: cmps[i : i+1], Then: puts[i : i+1]}); err != nil && ctx.Err() == nil {
					sf.errs.Add(1)
				}
			}
		}
		cmps, puts = cmps[n:], puts[n:]
	}
}

// ackQueue holds the simulated nodes' answers waiting to be sent: per
// node, the assignment puts received since its last txn went out, and the
// nodes that have some and no txn in flight, in arrival order.
type ackQueue struct {
	mu       sync.Mutex
	cond     *sync.Cond
	pending  map[int64][]kv.KeyValue
	inFlight map[int64]bool
	ready    []int64
}

func newAckQueue() *ackQueue {
	q := &ackQueue{pending: map[int64][]kv.KeyValue{}, inFlight: map[int64]bool{}}
	q.cond = sync.NewCond(&q.mu)
	return q
}

func (q *ackQueue) add(node int64, it kv.KeyValue) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.pending[node]) == 0 && !q.inFlight[node] {
		q.ready = append(q.ready, node)
		q.cond.Signal()
	}
	q.pending[node] = append(q.pending[node], it)
}

// take waits for a node with answers waiting and no txn in flight, and
// hands over its answers; false once ctx ends.
func (q *ackQueue) take(ctx context.Context) (int64, []kv.KeyValue, bool) {
	stop := context.AfterFunc(ctx, func() {
		q.mu.Lock()
		defer q.mu.Unlock()
		q.cond.Broadcast()
	})
	defer stop()
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.ready) == 0 {
		if ctx.Err() != nil {
			return 0, nil, false
		}
		q.cond.Wait()
	}
	node := q.ready[0]
	q.ready = q.ready[1:]
	its := q.pending[node]
	delete(q.pending, node)
	q.inFlight[node] = true
	return node, its, true
}

// done ends node's txn; answers that came meanwhile make it ready again.
func (q *ackQueue) done(node int64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.inFlight, node)
	if len(q.pending[node]) > 0 {
		q.ready = append(q.ready, node)
		q.cond.Signal()
	}
}

// keepAlive renews every live lease once a third of the TTL, from all the
// fleet's connections at once (one after another, 20 renewals could take
// longer than a 2 s TTL on a loaded machine). A lease found gone that the
// bench did not crash is recorded (see lostLease): the simulated node does
// not register again, as a real one would, so the run cannot finish.
func (sf *simFleet) keepAlive(ctx context.Context) {
	t := time.NewTicker(sf.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ids := make(chan int64)
		var wg sync.WaitGroup
		for _, b := range sf.acks {
			wg.Go(func() {
				for id := range ids {
					_, err := b.KeepAliveOnce(ctx, sf.leases[id])
					switch {
					case ctx.Err() != nil:
					case errors.Is(err, kv.ErrLeaseNotFound):
						if _, dead := sf.crashed.Load(id); !dead {
							sf.lost.CompareAndSwap(0, id)
						}
					case err != nil:
						sf.errs.Add(1)
					}
				}
			})
		}
		for id := range sf.leases {
			if _, dead := sf.crashed.Load(id); !dead {
				ids <- id
			}
		}
		close(ids)
		wg.Wait()
	}
}

// lostLease is an error naming a simulated node whose lease expired
// without the bench crashing it, or nil.
func (sf *simFleet) lostLease() error {
	if id := sf.lost.Load(); id != 0 {
		return fmt.Errorf("bench: B12: simulated node %d lost its lease (%v TTL): the fleet could not renew it in time on this machine", id, sf.ttl)
	}
	return nil
}

// crash stops node id's answers and renewals and returns its lease.
func (sf *simFleet) crash(id int64) kv.LeaseID {
	sf.crashed.Store(id, true)
	return sf.leases[id]
}

func (sf *simFleet) stop() {
	sf.cancel()
	sf.wg.Wait()
	for _, p := range sf.acks {
		p.Close()
	}
}

// waitProgress waits until n channels are Watched, logging the count every
// 10 seconds meanwhile. It fails when a simulated node lost its lease
// (lost), or when the count has not moved for noProgress.
func (t *tracker) waitProgress(ctx context.Context, e *Env, what string, n int, lost func() error) error {
	last, since := -1, time.Now()
	for {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := t.wait(wctx, func(t *tracker) bool { return t.watched == n })
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		t.mu.Lock()
		w, keys := t.watched, len(t.keys)
		t.mu.Unlock()
		e.logf("%s: %d of %d (%d assignment keys)", what, w, n, keys)
		if err := lost(); err != nil {
			return fmt.Errorf("%w (%d of %d Watched)", err, w, n)
		}
		if w != last {
			last, since = w, time.Now()
		} else if stuck := time.Since(since); stuck >= noProgress {
			dumpGoroutines(e)
			return fmt.Errorf("bench: %s: %d of %d Watched, unchanged for %v", what, w, n, stuck.Round(time.Second))
		}
	}
}

// noProgress is how long waitProgress waits with the count standing still:
// far longer than the coordinator's watch timeout (30 s), after which it
// places again whatever was not acknowledged.
const noProgress = 3 * time.Minute

// dumpGoroutines writes every goroutine's stack to the file named by
// CHANWATCH_BENCH_DUMP, if set, for a run that stopped making progress.
func dumpGoroutines(e *Env) {
	path := os.Getenv("CHANWATCH_BENCH_DUMP")
	if path == "" {
		return
	}
	f, err := os.Create(path)
	if err != nil {
		e.logf("goroutine dump: %v", err)
		return
	}
	defer f.Close()
	if err := pprof.Lookup("goroutine").WriteTo(f, 2); err != nil {
		e.logf("goroutine dump: %v", err)
		return
	}
	e.logf("goroutine dump written to %s", path)
}
