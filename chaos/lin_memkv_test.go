package chaos

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/memkv"
)

// TestLinearizabilityMemkv: eight handles on one memkv store (eight
// processes), with injected failures (FailNext) and hangs (Hang) on random
// handles: every completed operation, and every failed write that may have
// applied, fits one sequential history.
func TestLinearizabilityMemkv(t *testing.T) {
	parallelShort(t)
	r := newReport(t)
	store := memkv.New()
	t.Cleanup(func() { _ = store.Close() })
	handles := make([]*memkv.KV, 8)
	clients := make([]func() kv.KV, 8)
	for i := range handles {
		h := store.NewClient()
		handles[i] = h
		clients[i] = func() kv.KV { return h }
	}
	w := linWorkload{clients: 8, opsPerClient: scale(600, 5000), keys: 4, opTimeout: 50 * time.Millisecond}
	linTest(t, r, w, clients, func(ctx context.Context, rng *rand.Rand) {
		for pace(ctx, jitter(rng, time.Millisecond, 5*time.Millisecond)) {
			h := handles[rng.IntN(len(handles))]
			if rng.IntN(2) == 0 {
				n := 1 + rng.IntN(3)
				r.fault("memkv FailNext(%d)", n)
				h.FailNext(n, nil)
				continue
			}
			r.fault("memkv Hang")
			release := h.Hang()
			pace(ctx, jitter(rng, 5*time.Millisecond, 80*time.Millisecond))
			release()
		}
	})
}

// staleKV serves Get from a cache it refreshes every refresh reads: a
// deliberately broken backend, for the negative control.
type staleKV struct {
	kv.KV
	refresh int

	mu    sync.Mutex
	reads int
	cache map[string]kv.KeyValue
}

func (s *staleKV) Get(ctx context.Context, key string) (kv.KeyValue, int64, error) {
	s.mu.Lock()
	s.reads++
	item, ok := s.cache[key]
	fresh := !ok || s.reads%s.refresh == 0
	s.mu.Unlock()
	if !fresh {
		return item, 0, nil
	}
	item, rev, err := s.KV.Get(ctx, key)
	if err == nil {
		s.mu.Lock()
		s.cache[key] = item
		s.mu.Unlock()
	}
	return item, rev, err
}

// TestLinearizabilityNegativeControl: the same workload against a backend
// that serves stale reads must be flagged, or the check above proves
// nothing.
func TestLinearizabilityNegativeControl(t *testing.T) {
	parallelShort(t)
	r := newReport(t)
	store := memkv.New()
	t.Cleanup(func() { _ = store.Close() })
	stale := &staleKV{KV: store, refresh: 7, cache: map[string]kv.KeyValue{}}
	h := runLinWorkload(testCtx(t), linWorkload{clients: 8, opsPerClient: 60, keys: 2, opTimeout: time.Second},
		newRand(t), []func() kv.KV{func() kv.KV { return stale }})
	res := checkLin(r, "negative-control", h, 30*time.Second)
	r.figure("ops", len(h.ops))
	r.figure("porcupine", res)
	if res != porcupine.Illegal {
		t.Fatalf("porcupine says %v for a backend with stale reads, want Illegal", res)
	}
}
