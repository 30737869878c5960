package conformance

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/chanwatch/chanwatch/conformance/internal/require"
	"github.com/chanwatch/chanwatch/kv"
)

// RunKVConcurrency checks behaviour under concurrent clients (atomic CAS,
// linearizability), cancelled contexts and closed handles.
func RunKVConcurrency(t *testing.T, f Factory) {
	runScenarios(t, f, []scenario{
		{"CASCounter", concCASCounter},
		{"Linearizable", concLinearizable},
		{"CancelledContext", concCancelledContext},
		{"ClosedBackend", concClosedBackend},
	})
}

func concCASCounter(t *testing.T, s *sc) {
	const (
		workers = 16
		each    = 100
		key     = "counter"
	)
	put(t, s.ctx, s.b, key, "0")
	handles := make([]kv.Backend, workers)
	for i := range handles {
		handles[i] = s.env.Open(t)
	}
	wrote := make([][]int, workers) // the values each worker's successful CAS wrote
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for i, h := range handles {
		wg.Go(func() {
			item, _, err := h.Get(s.ctx, key)
			if err != nil {
				errs[i] = err
				return
			}
			n, mod := atoi(item.Value), item.ModRevision
			rng := rand.New(rand.NewPCG(uint64(i), 0))
			failures := 0
			for len(wrote[i]) < each {
				resp, err := h.Txn(s.ctx, kv.Txn{
					If:   []kv.Cmp{kv.CmpModRevision(key, kv.Equal, mod)},
					Then: []kv.Op{kv.OpPut(key, []byte(strconv.Itoa(n+1)))},
					Else: []kv.Op{kv.OpGet(key)},
				})
				if err != nil {
					errs[i] = fmt.Errorf("worker %d after %d increments: %w", i, len(wrote[i]), err)
					return
				}
				if resp.Succeeded {
					failures = 0
					n++
					mod = resp.Revision
					wrote[i] = append(wrote[i], n)
					continue
				}
				if len(resp.Responses) != 1 || resp.Responses[0].KV == nil {
					errs[i] = fmt.Errorf("worker %d: failed CAS without the Else Get's KV: %+v", i, resp)
					return
				}
				n, mod = atoi(resp.Responses[0].KV.Value), resp.Responses[0].KV.ModRevision
				failures++
				if err := backoff(s.ctx, rng, failures); err != nil {
					errs[i] = err
					return
				}
			}
		})
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))

	var all []int
	for i, w := range wrote {
		require.True(t, slices.IsSorted(w), "worker %d saw the counter go backwards: %v", i, w)
		all = append(all, w...)
	}
	slices.Sort(all)
	want := make([]int, workers*each)
	for i := range want {
		want[i] = i + 1
	}
	require.Equal(t, want, all, "every increment from 1 to %d succeeded exactly once", workers*each)
	item := get(t, s.ctx, s.b, key)
	require.Equal(t, strconv.Itoa(workers*each), string(item.Value))
	require.Equal(t, int64(workers*each+1), item.Version)
}

// backoff waits a random time that grows with a worker's consecutive
// failed CAS attempts, as a real client under contention does. Without it 16
// workers spend most of their round trips on CASes that lose.
func backoff(ctx context.Context, rng *rand.Rand, failures int) error {
	d := time.Duration(rng.Int64N(int64(min(failures, 16)) * int64(casBackoffUnit)))
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// casBackoffUnit scales backoff: with it, the CAS scenario on an in-process
// etcd under -race takes about 9s instead of 40s.
const casBackoffUnit = 3 * time.Millisecond

func atoi(b []byte) int {
	n, err := strconv.Atoi(string(b))
	if err != nil {
		return -1 // makes the next CAS write a wrong value, which the test catches
	}
	return n
}

func concLinearizable(t *testing.T, s *sc) {
	const (
		clients = 8
		opsPer  = 50
	)
	keys := []string{"lin/a", "lin/b", "lin/c"}
	seed := uint64(time.Now().UnixNano())
	t.Logf("history seed %d", seed)
	handles := make([]kv.Backend, clients)
	for i := range handles {
		handles[i] = s.env.Open(t)
	}
	start := time.Now()
	now := func() int64 { return time.Since(start).Nanoseconds() }
	history := make([][]porcupine.Operation, clients)
	errs := make([]error, clients)
	var wg sync.WaitGroup
	for c, h := range handles {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(c)))
			last := map[string]string{} // the value this client last saw per key
			for i := range opsPer {
				key := keys[rng.IntN(len(keys))]
				in := regInput{Key: key, Value: fmt.Sprintf("c%d-%d", c, i)}
				var out regOutput
				var err error
				call := now()
				switch r := rng.IntN(10); {
				case r < 3:
					in.Kind = regPut
					_, err = kv.Put(s.ctx, h, key, []byte(in.Value))
					last[key] = in.Value
				case r < 6 || last[key] == "":
					in.Kind = regGet
					var item kv.KeyValue
					item, _, err = h.Get(s.ctx, key)
					if errors.Is(err, kv.ErrKeyNotFound) {
						err = nil
					}
					out.Value = string(item.Value)
					last[key] = out.Value
				default:
					in.Kind, in.Expect = regCAS, last[key]
					var resp kv.TxnResponse
					resp, err = h.Txn(s.ctx, kv.Txn{
						If:   []kv.Cmp{kv.CmpValue(key, kv.Equal, []byte(in.Expect))},
						Then: []kv.Op{kv.OpPut(key, []byte(in.Value))},
						Else: []kv.Op{kv.OpGet(key)},
					})
					out.Swapped = resp.Succeeded
					switch {
					case err != nil:
					case resp.Succeeded:
						out.Value = in.Value
					case len(resp.Responses) == 1 && resp.Responses[0].KV != nil:
						out.Value = string(resp.Responses[0].KV.Value)
					}
					last[key] = out.Value
				}
				ret := now()
				if err != nil {
					errs[c] = fmt.Errorf("client %d op %d (%+v): %w", c, i, in, err)
					return
				}
				history[c] = append(history[c], porcupine.Operation{ClientId: c, Input: in, Call: call, Output: out, Return: ret})
			}
		})
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...), "every call of the history must succeed")

	var ops []porcupine.Operation
	for _, h := range history {
		ops = append(ops, h...)
	}
	res, info := porcupine.CheckOperationsVerbose(registerModel, ops, time.Minute)
	if res != porcupine.Ok {
		dir, err := os.MkdirTemp("", "chanwatch-linearizability-")
		if err == nil {
			path := filepath.Join(dir, "history.html")
			if err := porcupine.VisualizePath(registerModel, info, path); err == nil {
				t.Logf("visualization of the history: %s", path)
			}
		}
	}
	require.Equal(t, porcupine.Ok, res, "the history of %d ops is not linearizable (seed %d)", len(ops), seed)
}

// everyCall returns each context-taking call of kv.Backend, bound to b,
// ctx and lease id, by name. Watch is checked apart.
func everyCall(ctx context.Context, b kv.Backend, id kv.LeaseID, rev int64) map[string]func() error {
	return map[string]func() error{
		"Get": func() error { _, _, err := b.Get(ctx, "x"); return err },
		"List": func() error {
			_, _, err := b.List(ctx, "")
			return err
		},
		"Txn": func() error {
			_, err := b.Txn(ctx, kv.Txn{If: []kv.Cmp{kv.CmpMissing("x")}, Then: []kv.Op{kv.OpPut("x", []byte("1"))}})
			return err
		},
		"Grant":         func() error { _, err := b.Grant(ctx, time.Minute); return err },
		"KeepAliveOnce": func() error { _, err := b.KeepAliveOnce(ctx, id); return err },
		"TimeToLive":    func() error { _, err := b.TimeToLive(ctx, id); return err },
		"Revoke":        func() error { return b.Revoke(ctx, id) },
		"Compact":       func() error { return b.Compact(ctx, rev) },
	}
}

func concCancelledContext(t *testing.T, s *sc) {
	id := grant(t, s, time.Minute)
	rev := put(t, s.ctx, s.b, "cc/k", "v")
	cancelled, cancel := context.WithCancel(s.ctx)
	cancel()
	expired, cancel2 := context.WithDeadline(s.ctx, time.Now().Add(-time.Second))
	defer cancel2()

	for _, c := range []struct {
		name string
		ctx  context.Context
		want error
	}{
		{"cancelled", cancelled, context.Canceled},
		{"past deadline", expired, context.DeadlineExceeded},
	} {
		for name, call := range everyCall(c.ctx, s.b, id, rev) {
			var err error
			returnsPromptly(t, name+" with a "+c.name+" context", func() { err = call() })
			require.ErrorIs(t, err, c.want, "%s with a %s context", name, c.name)
		}
		w := startWatch(t, c.ctx, s.b, "cc/", 0)
		events := w.requireClosed(promptTimeout)
		require.Empty(t, events, "Watch with a %s context", c.name)
	}

	// The handle still works with a live context.
	require.Equal(t, "v", string(get(t, s.ctx, s.b, "cc/k").Value))
}

func concClosedBackend(t *testing.T, s *sc) {
	id := grant(t, s, time.Minute)
	h := s.env.Open(t)
	rev := put(t, s.ctx, h, "cb/k", "v")
	w := startWatch(t, s.ctx, h, "cb/", rev+1)
	obs := startWatch(t, s.ctx, s.b, "cb/", rev+1)

	require.NoError(t, h.Close())
	_, err := w.terminal()
	require.ErrorIs(t, err, kv.ErrClosed, "an open watch ends with ErrClosed")

	for name, call := range everyCall(s.ctx, h, id, rev) {
		var err error
		returnsPromptly(t, name+" on a closed backend", func() { err = call() })
		require.ErrorIs(t, err, kv.ErrClosed, "%s on a closed backend", name)
	}
	late := startWatch(t, s.ctx, h, "cb/", 0)
	events, err := late.terminal()
	require.ErrorIs(t, err, kv.ErrClosed, "a Watch on a closed backend gives a final ErrClosed")
	require.Empty(t, events)
	if err := h.Close(); err != nil {
		require.ErrorIs(t, err, kv.ErrClosed, "a second Close returns nil or ErrClosed")
	}

	// The other handles on the store go on: a closed handle is a crashed
	// process, not a dead store.
	left, err := s.b.TimeToLive(s.ctx, id)
	require.NoError(t, err, "closing one handle does not end leases")
	require.Greater(t, left, time.Duration(0))
	rev2 := put(t, s.ctx, s.b, "cb/k", "w")
	require.Equal(t, []evt{putEvt("cb/k", "w", rev2)}, digest(obs.next(1)))
	require.Equal(t, "w", string(get(t, s.ctx, s.env.Open(t), "cb/k").Value))
}
