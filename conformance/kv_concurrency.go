package conformance

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/chanwatch/chanwatch/internal/linearize"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/stretchr/testify/require"
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

// ambiguous reports whether err is an outcome the contract allows a healthy
// replicated backend under load (a lost leader, an election): the call may
// or may not have applied, and the caller retries idempotently.
func ambiguous(err error) bool {
	return errors.Is(err, kv.ErrUnknownOutcome) || errors.Is(err, kv.ErrUnavailable)
}

// casTag names one CAS attempt: worker w's a-th attempt.
type casTag struct{ worker, attempt int }

// counterValue encodes a counter value with the attempt that wrote it, so
// the write history shows whose increment each write was.
func counterValue(n int, tag casTag) string {
	return fmt.Sprintf("%d:%d:%d", n, tag.worker, tag.attempt)
}

// parseCounter decodes counterValue; it returns n = -1 on garbage, which
// makes the next CAS write a wrong value that the history check catches.
func parseCounter(b []byte) (int, casTag) {
	var n int
	var tag casTag
	if _, err := fmt.Sscanf(string(b), "%d:%d:%d", &n, &tag.worker, &tag.attempt); err != nil {
		return -1, casTag{}
	}
	return n, tag
}

func concCASCounter(t *testing.T, s *sc) {
	const (
		workers = 16
		each    = 100
		key     = "counter"
	)
	r0 := put(t, s.ctx, s.b, key, counterValue(0, casTag{-1, 0}))
	history := startWatch(t, s.ctx, s.b, key, r0+1)
	handles := make([]kv.Backend, workers)
	for i := range handles {
		handles[i] = s.env.Open(t)
	}
	won := make([][]casTag, workers)     // attempts known to have applied
	unknown := make([][]casTag, workers) // attempts whose outcome is unknown
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for i, h := range handles {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 0))
			failures := 0
			// read re-reads the counter, retrying ambiguous failures.
			read := func() (int, int64, error) {
				for {
					item, _, err := h.Get(s.ctx, key)
					if err == nil {
						n, _ := parseCounter(item.Value)
						return n, item.ModRevision, nil
					}
					if !ambiguous(err) {
						return 0, 0, err
					}
					failures++
					if err := backoff(s.ctx, rng, failures); err != nil {
						return 0, 0, err
					}
				}
			}
			n, mod, err := read()
			if err != nil {
				errs[i] = err
				return
			}
			for attempt := 1; len(won[i]) < each; attempt++ {
				tag := casTag{i, attempt}
				resp, err := h.Txn(s.ctx, kv.Txn{
					If:   []kv.Cmp{kv.CmpModRevision(key, kv.Equal, mod)},
					Then: []kv.Op{kv.OpPut(key, []byte(counterValue(n+1, tag)))},
					Else: []kv.Op{kv.OpGet(key)},
				})
				switch {
				case err == nil && resp.Succeeded:
					failures = 0
					n++
					mod = resp.Revision
					won[i] = append(won[i], tag)
					continue
				case err == nil:
					if len(resp.Responses) != 1 || resp.Responses[0].KV == nil {
						errs[i] = fmt.Errorf("worker %d: failed CAS without the Else Get's KV: %+v", i, resp)
						return
					}
					n, _ = parseCounter(resp.Responses[0].KV.Value)
					mod = resp.Responses[0].KV.ModRevision
				case ambiguous(err):
					// It may have applied: the history check counts it if
					// it did. Re-read and go on, as the contract says.
					unknown[i] = append(unknown[i], tag)
					if n, mod, err = read(); err != nil {
						errs[i] = err
						return
					}
				default:
					errs[i] = fmt.Errorf("worker %d after %d increments: %w", i, len(won[i]), err)
					return
				}
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

	// Every write of the counter, in revision order, must be the previous
	// value plus one: no lost update, no double increment.
	item := get(t, s.ctx, s.b, key)
	final, _ := parseCounter(item.Value)
	require.GreaterOrEqual(t, final, workers*each, "the counter after %d known increments", workers*each)
	require.Equal(t, int64(final+1), item.Version, "one write per increment")
	applied := map[casTag]bool{}
	for i, e := range history.next(final) {
		require.Equal(t, kv.EventPut, e.Type)
		n, tag := parseCounter(e.KV.Value)
		require.Equal(t, i+1, n, "write %d of the counter (%q) does not increment the previous one", i+1, e.KV.Value)
		require.False(t, applied[tag], "attempt %+v applied twice", tag)
		applied[tag] = true
	}
	var unknownApplied, unknownTotal int
	for i := range workers {
		for _, tag := range won[i] {
			require.True(t, applied[tag], "attempt %+v succeeded but is not in the history", tag)
			delete(applied, tag)
		}
		unknownTotal += len(unknown[i])
		for _, tag := range unknown[i] {
			if applied[tag] {
				unknownApplied++
				delete(applied, tag)
			}
		}
	}
	require.Empty(t, applied, "the history holds writes no worker made or failed")
	require.Equal(t, workers*each+unknownApplied, final, "the counter ends at exactly %d plus the ambiguous attempts that applied", workers*each)
	if unknownTotal > 0 {
		t.Logf("%d CAS attempts had an unknown outcome (%d of them applied)", unknownTotal, unknownApplied)
	}
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
				in := linearize.Input{Key: key, Value: fmt.Sprintf("c%d-%d", c, i)}
				var out linearize.Output
				var err error
				call := now()
				switch r := rng.IntN(10); {
				case r < 3:
					in.Kind = linearize.Put
					_, err = kv.Put(s.ctx, h, key, []byte(in.Value))
					last[key] = in.Value
				case r < 6 || last[key] == "":
					in.Kind = linearize.Get
					var item kv.KeyValue
					item, _, err = h.Get(s.ctx, key)
					if errors.Is(err, kv.ErrKeyNotFound) {
						err = nil
					}
					out.Value = string(item.Value)
					last[key] = out.Value
				default:
					in.Kind, in.Expect = linearize.CAS, last[key]
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
				switch {
				case err == nil:
				case ambiguous(err) && in.Kind == linearize.Get:
					// A read that returned nothing constrains nothing.
					last[key] = ""
					continue
				case ambiguous(err):
					// A write that may have applied: it may take effect at
					// any time after its call, so it never returns.
					out, ret = linearize.Output{Unknown: true}, math.MaxInt64
					last[key] = ""
				default:
					errs[c] = fmt.Errorf("client %d op %d (%+v): %w", c, i, in, err)
					return
				}
				history[c] = append(history[c], porcupine.Operation{ClientId: c, Input: in, Call: call, Output: out, Return: ret})
			}
		})
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...), "every call of the history must succeed or have an unknown outcome")

	var ops []porcupine.Operation
	for _, h := range history {
		ops = append(ops, h...)
	}
	res, info := porcupine.CheckOperationsVerbose(linearize.Model, ops, time.Minute)
	if res != porcupine.Ok {
		dir, err := os.MkdirTemp("", "chanwatch-linearizability-")
		if err == nil {
			path := filepath.Join(dir, "history.html")
			if err := porcupine.VisualizePath(linearize.Model, info, path); err == nil {
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
