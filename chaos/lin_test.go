package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/chanwatch/chanwatch/internal/linearize"
	"github.com/chanwatch/chanwatch/kv"
)

// The linearizability check (internal/linearize's model): every key is an
// independent register with put, get and compare-and-swap; every written
// value is unique, so a read names the write it saw. A call that failed may or may not have applied (a
// timeout, a lost leader, a reset connection): it is kept with an unknown
// outcome and a return time at infinity, so porcupine may place it anywhere
// after its call, or nowhere that anyone observed, as etcd's robustness
// suite does.

// linWorkload says how many clients run how many operations on how many keys.
type linWorkload struct {
	clients, opsPerClient, keys int
	opTimeout                   time.Duration
}

// linHistory runs the workload: client i calls through clients[i%len]()
// (a function, so that a restarted server's new handle is picked up).
type linHistory struct {
	mu      sync.Mutex
	ops     []porcupine.Operation
	unknown int
	failed  int // failed reads (dropped: a failed read changes nothing)
}

func runLinWorkload(ctx context.Context, w linWorkload, rng *rand.Rand, clients []func() kv.KV) *linHistory {
	h := &linHistory{}
	base := time.Now()
	now := func() int64 { return int64(time.Since(base)) }
	var seq atomic.Int64
	var wg sync.WaitGroup
	for c := range w.clients {
		crng := rand.New(rand.NewPCG(rng.Uint64(), uint64(c)))
		get := clients[c%len(clients)]
		wg.Go(func() {
			last := map[string]string{} // the last value this client saw per key
			for range w.opsPerClient {
				if ctx.Err() != nil {
					return
				}
				key := fmt.Sprintf("lin/k%d", crng.IntN(w.keys))
				in := linearize.Input{Key: key}
				switch p := crng.IntN(10); {
				case p < 4:
					in.Kind = linearize.Put
				case p < 8:
					in.Kind = linearize.Get
				default:
					in.Kind = linearize.CAS
					in.Expect = last[key]
				}
				if in.Kind != linearize.Get {
					in.Value = fmt.Sprintf("c%d-%d", c, seq.Add(1))
				}
				octx, cancel := context.WithTimeout(ctx, w.opTimeout)
				call := now()
				out, err := linCall(octx, get(), in)
				ret := now()
				cancel()
				if err != nil {
					pace(ctx, 10*time.Millisecond) // do not burn the budget on a dead server
					if in.Kind == linearize.Get {
						h.mu.Lock()
						h.failed++
						h.mu.Unlock()
						continue
					}
					out, ret = linearize.Output{Unknown: true}, math.MaxInt64
				}
				switch {
				case out.Unknown:
				case in.Kind == linearize.Get, in.Kind == linearize.CAS && !out.Swapped:
					last[key] = out.Value
				default:
					last[key] = in.Value
				}
				h.mu.Lock()
				h.ops = append(h.ops, porcupine.Operation{ClientId: c, Input: in, Output: out, Call: call, Return: ret})
				if out.Unknown {
					h.unknown++
				}
				h.mu.Unlock()
			}
		})
	}
	wg.Wait()
	return h
}

func linCall(ctx context.Context, b kv.KV, in linearize.Input) (linearize.Output, error) {
	switch in.Kind {
	case linearize.Put:
		_, err := kv.Put(ctx, b, in.Key, []byte(in.Value))
		return linearize.Output{}, err
	case linearize.Get:
		item, _, err := b.Get(ctx, in.Key)
		if errors.Is(err, kv.ErrKeyNotFound) {
			return linearize.Output{}, nil
		}
		return linearize.Output{Value: string(item.Value)}, err
	default:
		// A missing key is "": compare version 0 rather than a value, which
		// is never equal on a missing key.
		cmp := kv.CmpValue(in.Key, kv.Equal, []byte(in.Expect))
		if in.Expect == "" {
			cmp = kv.CmpMissing(in.Key)
		}
		r, err := b.Txn(ctx, kv.Txn{If: []kv.Cmp{cmp}, Then: []kv.Op{kv.OpPut(in.Key, []byte(in.Value))}, Else: []kv.Op{kv.OpGet(in.Key)}})
		if err != nil {
			return linearize.Output{}, err
		}
		if r.Succeeded {
			return linearize.Output{Swapped: true}, nil
		}
		out := linearize.Output{}
		if len(r.Responses) == 1 && r.Responses[0].KV != nil {
			out.Value = string(r.Responses[0].KV.Value)
		}
		return out, nil
	}
}

// checkLin checks h and returns porcupine's verdict; an illegal or
// undecided history attaches porcupine's HTML view to the report.
func checkLin(r *report, name string, h *linHistory, timeout time.Duration) porcupine.CheckResult {
	ops := pruneUnobserved(h.ops)
	sort.Slice(ops, func(i, j int) bool { return ops[i].Call < ops[j].Call })
	res, info := porcupine.CheckOperationsVerbose(linearize.Model, ops, timeout)
	if res != porcupine.Ok {
		var buf bytes.Buffer
		if err := porcupine.Visualize(linearize.Model, info, &buf); err == nil {
			r.attach(name+"-porcupine.html", buf.Bytes())
		}
		var lines bytes.Buffer
		for _, op := range ops {
			ret := "inf"
			if op.Return != math.MaxInt64 {
				ret = fmt.Sprint(op.Return)
			}
			fmt.Fprintf(&lines, "client=%d call=%d return=%s %s\n", op.ClientId, op.Call, ret, linearize.Model.DescribeOperation(op.Input, op.Output))
		}
		r.attach(name+"-operations.txt", lines.Bytes())
	}
	return res
}

// pruneUnobserved drops the writes with unknown outcomes whose value no
// read observed. Such a write can always be linearized at the very end of
// the history (its return is at infinity and nothing reads what it wrote),
// so dropping it changes no verdict, and it keeps porcupine's search from
// exploding on a history with many failed writes (etcd's robustness suite
// patches its histories the same way).
func pruneUnobserved(ops []porcupine.Operation) []porcupine.Operation {
	seen := map[string]bool{}
	for _, op := range ops {
		in, out := op.Input.(linearize.Input), op.Output.(linearize.Output)
		if out.Unknown {
			continue
		}
		switch {
		case in.Kind == linearize.Get, in.Kind == linearize.CAS && !out.Swapped:
			seen[out.Value] = true
		case in.Kind == linearize.CAS && out.Swapped:
			seen[in.Expect] = true
		}
	}
	kept := make([]porcupine.Operation, 0, len(ops))
	for _, op := range ops {
		if op.Output.(linearize.Output).Unknown && !seen[op.Input.(linearize.Input).Value] {
			continue
		}
		kept = append(kept, op)
	}
	return kept
}

// linTest runs the workload under faults and checks the history.
func linTest(t *testing.T, r *report, w linWorkload, clients []func() kv.KV, faults func(ctx context.Context, rng *rand.Rand)) {
	rng := newRand(t)
	ctx := testCtx(t)
	fctx, stopFaults := context.WithCancel(ctx)
	faultsDone := make(chan struct{})
	frng := rand.New(rand.NewPCG(rng.Uint64(), 1))
	go func() { defer close(faultsDone); faults(fctx, frng) }()
	h := runLinWorkload(ctx, w, rng, clients)
	stopFaults()
	<-faultsDone
	// Liveness after the faults heal: every client writes again.
	healed := time.Now()
	for i := range w.clients {
		ok := poll(30*time.Second, func() bool {
			octx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			_, err := kv.Put(octx, clients[i%len(clients)](), "lin/health", []byte("ok"))
			return err == nil
		})
		if !ok {
			r.violate("client %d cannot write 30s after the faults healed", i)
			break
		}
	}
	r.figure("recovery", time.Since(healed).Round(time.Millisecond))
	res := checkLin(r, "history", h, scale(30*time.Second, 5*time.Minute))
	r.figure("ops", len(h.ops))
	r.figure("unknown", h.unknown)
	r.figure("failed_reads", h.failed)
	r.figure("porcupine", res)
	if res != porcupine.Ok {
		r.violate("history of %d operations (%d unknown) is %v for porcupine", len(h.ops), h.unknown, res)
	}
	if len(h.ops)-h.unknown < w.clients*w.opsPerClient/4 {
		t.Errorf("only %d of %d operations completed: the faults left too little to check", len(h.ops)-h.unknown, w.clients*w.opsPerClient)
	}
}

// pace waits d or until ctx is done (false).
func pace(ctx context.Context, d time.Duration) bool {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-tm.C:
		return true
	}
}

func jitter(rng *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(rng.Int64N(int64(hi-lo)+1))
}
