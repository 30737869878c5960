package raftkv

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/chanwatch/chanwatch/internal/linearize"
	"github.com/chanwatch/chanwatch/kv"
)

// history records operations with timestamps on one monotonic clock.
type history struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
}

func (h *history) now() int64 { return int64(time.Since(h.start)) }

func (h *history) add(client int, in linearize.Input, out linearize.Output, call, ret int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Output: out, Call: call, Return: ret})
}

func (h *history) snapshot() []porcupine.Operation {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]porcupine.Operation(nil), h.ops...)
}

// get records a linearizable Get through n.
func (h *history) get(ctx context.Context, client int, n kv.KV, key string) error {
	call := h.now()
	item, _, err := n.Get(ctx, key)
	ret := h.now()
	if err != nil && !errors.Is(err, kv.ErrKeyNotFound) {
		return err // a failed read has no effect: leave it out
	}
	h.add(client, linearize.Input{Kind: linearize.Get, Key: key}, linearize.Output{Value: string(item.Value)}, call, ret)
	return nil
}

// put records a Put through n. A put whose outcome is unknown is recorded
// as pending: it may take effect at any time after its call, or never.
func (h *history) put(ctx context.Context, client int, n kv.KV, key, value string) error {
	call := h.now()
	_, err := kv.Put(ctx, n, key, []byte(value))
	ret := h.now()
	switch {
	case err == nil:
	case isAmbiguous(err):
		ret = math.MaxInt64
	case errors.Is(err, kv.ErrUnavailable), errors.Is(err, kv.ErrClosed):
		// Without ErrUnknownOutcome these say the write was never
		// proposed (no leader, or the node was closed): leave it out. Had
		// it applied after all, the reads would show it and the check
		// would fail.
		return nil
	default:
		return err
	}
	h.add(client, linearize.Input{Kind: linearize.Put, Key: key, Value: value}, linearize.Output{}, call, ret)
	return nil
}

// TestLinearizableAcrossLeaderKill runs 8 clients against all three nodes,
// kills the leader in the middle of the load and restarts it, and checks
// the whole history with porcupine: no acknowledged write is lost, no read
// is stale. Then it shows the checker can fail: a local read on a
// partitioned old leader, bypassing the read index, is caught.
func TestLinearizableAcrossLeaderKill(t *testing.T) {
	c := startCluster(t, 3)
	ctx := testContext(t)
	first := leader(t, c)

	const (
		clients = 8
		opsEach = 120
		keys    = 4
	)
	h := &history{start: time.Now()}
	var done atomic.Int64
	killed := make(chan struct{})
	restarted := make(chan struct{})
	var wg sync.WaitGroup

	// The fault: kill the leader a third of the way in, restart it two
	// thirds of the way in.
	wg.Go(func() {
		defer close(restarted)
		eventually(t, func() bool { return done.Load() >= clients*opsEach/3 }, "a third of the load")
		noErr(t, c.Kill(first))
		close(killed)
		eventually(t, func() bool { return done.Load() >= 2*clients*opsEach/3 }, "two thirds of the load")
		noErr(t, c.Restart(first))
	})

	errs := make([]error, clients)
	for cl := range clients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(cl), 1))
			for i := range opsEach {
				n := c.Node(rng.IntN(c.Len()))
				key := fmt.Sprintf("lin/%d", rng.IntN(keys))
				var err error
				if rng.IntN(2) == 0 {
					err = h.put(ctx, cl, n, key, fmt.Sprintf("c%d-%d", cl, i))
				} else {
					err = h.get(ctx, cl, n, key)
					if errors.Is(err, kv.ErrClosed) || errors.Is(err, kv.ErrUnavailable) {
						err = nil
					}
				}
				if err != nil {
					errs[cl] = fmt.Errorf("client %d op %d: %w", cl, i, err)
					return
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	noErr(t, errors.Join(errs...))
	<-restarted

	// Final reads of every key through every node belong to the history:
	// an acknowledged write that was lost would show here.
	leader(t, c)
	for i := range c.Len() {
		for k := range keys {
			noErr(t, h.get(ctx, 100+i, c.Node(i), fmt.Sprintf("lin/%d", k)))
		}
	}
	ops := h.snapshot()
	pending := 0
	for _, op := range ops {
		if op.Return == math.MaxInt64 {
			pending++
		}
	}
	t.Logf("%d operations, %d with unknown outcome", len(ops), pending)
	start := time.Now()
	res := porcupine.CheckOperationsTimeout(linearize.Model, ops, 30*time.Second)
	equal(t, res, porcupine.Ok, "the history is linearizable")
	t.Logf("checked in %v", time.Since(start))
	waitConverged(t, c)

	// Now a stale read, to show that the check can fail. Cut the leader
	// off; the others elect a new one and take a write; a read served from
	// the old leader's own store, skipping the read index, misses it.
	old := leader(t, c)
	on := c.Node(old)
	noErr(t, h.put(ctx, 200, on, "lin/stale", "before-partition"))
	noErr(t, on.fsm.waitApplied(ctx, nil, on.raft.CommitIndex()))
	on.mux.setPartitioned(true)
	var nl int
	eventually(t, func() bool {
		for i := range c.Len() {
			if i != old && c.Node(i).IsLeader() && c.Node(i).readyTerm.Load() == c.Node(i).raft.CurrentTerm() {
				nl = i
				return true
			}
		}
		return false
	}, "a new leader without the partitioned one")
	noErr(t, h.put(ctx, 200, c.Node(nl), "lin/stale", "after-partition"))
	// The real read path refuses to answer from the cut-off node...
	short, cancel := context.WithTimeout(ctx, time.Second)
	_, _, err := on.Get(short, "lin/stale")
	cancel()
	check(t, err != nil, "a linearizable read on a partitioned node must fail, not be stale")
	// ...and the bypass answers with the old value.
	call := h.now()
	item, _, err := on.fsm.store.Get("lin/stale")
	noErr(t, err)
	h.add(201, linearize.Input{Kind: linearize.Get, Key: "lin/stale"}, linearize.Output{Value: string(item.Value)}, call, h.now())
	equal(t, string(item.Value), "before-partition", "the partitioned node cannot have the new write")
	res = porcupine.CheckOperationsTimeout(linearize.Model, h.snapshot(), 30*time.Second)
	equal(t, res, porcupine.Illegal, "the checker catches the stale local read")

	// Healed, the old leader catches up.
	on.mux.setPartitioned(false)
	waitConverged(t, c)
}

// waitConverged waits until every running node has applied the same state.
func waitConverged(t testing.TB, c *Cluster) {
	t.Helper()
	eventually(t, func() bool {
		var h uint64
		for i := range c.Len() {
			n := c.Node(i)
			if n.closed() {
				continue
			}
			if hi := n.fsm.store.Hash(); h == 0 {
				h = hi
			} else if hi != h {
				return false
			}
		}
		return true
	}, "every node applies the same state")
}
