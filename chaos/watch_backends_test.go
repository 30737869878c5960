package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/internal/netproxy"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/memkv"
)

// TestWatchMemkv: watchers on their own handles; faults: dropped watches
// (DropWatches), failed calls (FailNext) on a watcher's handle, and
// compaction behind the watchers.
func TestWatchMemkv(t *testing.T) {
	parallelShort(t)
	r := newReport(t)
	store := memkv.New()
	t.Cleanup(func() { _ = store.Close() })
	const nw = 3
	handles := make([]*memkv.KV, nw)
	for i := range handles {
		handles[i] = store.NewClient()
	}
	watchTest(t, r, watchSetup{
		writers: 4, watchers: nw, keys: 16, duration: scale(time.Second, 30*time.Second),
		writer:  func(int) kv.KV { return store },
		watch:   func(i int) watchKV { return handles[i] },
		compact: store.Compact,
		faults: func(ctx context.Context, rng *rand.Rand) {
			for pace(ctx, jitter(rng, 10*time.Millisecond, 50*time.Millisecond)) {
				h := handles[rng.IntN(nw)]
				if rng.IntN(2) == 0 {
					r.fault("memkv DropWatches")
					h.DropWatches()
				} else {
					r.fault("memkv FailNext(2)")
					h.FailNext(2, nil)
				}
			}
		},
	})
}

// TestWatchEtcd: watchers on clients of their own behind proxies; faults: a
// watcher's connection blackholed (the client's keep-alive gives up and
// reconnects, and clientv3 resumes the watch) or reset, compaction behind
// the watchers, and in the long version a member SIGKILLed and restarted.
func TestWatchEtcd(t *testing.T) {
	parallelShort(t)
	r := newReport(t)
	etcd := startEtcd(t)
	root := uniqueRoot(t)
	wcli, _ := etcd.client(t, false)
	writer := etcd.backend(t, wcli, root)
	const nw = 3
	watchers := make([]kv.Backend, nw)
	proxies := make([][]*netproxy.Proxy, nw)
	for i := range nw {
		cli, ps := etcd.client(t, true)
		watchers[i], proxies[i] = etcd.backend(t, cli, root), ps
	}
	watchTest(t, r, watchSetup{
		writers: 4, watchers: nw, keys: 16, duration: scale(2*time.Second, 60*time.Second),
		writer:  func(int) kv.KV { return writer },
		watch:   func(i int) watchKV { return watchers[i] },
		compact: writer.Compact,
		faults: func(ctx context.Context, rng *rand.Rand) {
			for pace(ctx, jitter(rng, 100*time.Millisecond, 400*time.Millisecond)) {
				switch k := rng.IntN(4); {
				case k == 0 && etcd.kill != nil:
					m := rng.IntN(etcd.members())
					r.fault("etcd member %d SIGKILL", m)
					if err := etcd.kill(m); err != nil {
						t.Errorf("kill: %v", err)
						return
					}
					pace(ctx, jitter(rng, 200*time.Millisecond, time.Second))
					if err := etcd.restart(m); err != nil {
						t.Errorf("restart: %v", err)
						return
					}
					r.note("etcd member %d restarted", m)
				case k <= 2:
					i := rng.IntN(nw)
					r.fault("watcher %d blackholed", i)
					setMode(proxies[i], netproxy.Blackhole)
					pace(ctx, jitter(rng, 500*time.Millisecond, 3*time.Second))
					setMode(proxies[i], netproxy.Pass)
					r.note("watcher %d healed", i)
				default:
					i := rng.IntN(nw)
					r.fault("watcher %d reset", i)
					setMode(proxies[i], netproxy.Reset)
					pace(ctx, jitter(rng, 10*time.Millisecond, 100*time.Millisecond))
					setMode(proxies[i], netproxy.Pass)
				}
			}
		},
	})
}

// TestWatchRaftkv: watchers on each node of a 3-node raftkv cluster; faults:
// the leader killed and restarted (its watchers end with ErrClosed and resume
// on the restarted node), a node's inbound blackholed, and compaction.
func TestWatchRaftkv(t *testing.T) {
	parallelShort(t)
	r := newReport(t)
	c := startRaft(t, 3)
	watchTest(t, r, watchSetup{
		writers: 4, watchers: 3, keys: 16, duration: scale(2*time.Second, 60*time.Second),
		writer: func(i int) kv.KV { return c.node(i % 3) },
		watch:  func(i int) watchKV { return c.node(i % 3) },
		compact: func(ctx context.Context, rev int64) error {
			return c.node(0).Compact(ctx, rev)
		},
		faults: func(ctx context.Context, rng *rand.Rand) {
			for pace(ctx, jitter(rng, 200*time.Millisecond, 600*time.Millisecond)) {
				if rng.IntN(2) == 0 {
					l := c.leader()
					if l < 0 {
						continue
					}
					r.fault("raftkv leader %d killed", l)
					if err := c.kill(l); err != nil {
						t.Errorf("kill: %v", err)
					}
					pace(ctx, jitter(rng, 300*time.Millisecond, time.Second))
					if err := c.restart(l); err != nil {
						t.Errorf("restart: %v", err)
						return
					}
					r.note("raftkv node %d restarted", l)
					continue
				}
				i := rng.IntN(3)
				r.fault("raftkv node %d inbound blackholed", i)
				c.proxies[i].Blackhole()
				pace(ctx, jitter(rng, 300*time.Millisecond, time.Second))
				c.proxies[i].Pass()
				r.note("raftkv node %d healed", i)
			}
		},
	})
}

// lossyWatch drops the events of every 97th revision it delivers and sends
// every 89th response twice: a broken backend for the negative control.
type lossyWatch struct {
	*memkv.KV
}

func (l lossyWatch) Watch(ctx context.Context, prefix string, fromRev int64) kv.WatchChan {
	in := l.KV.Watch(ctx, prefix, fromRev)
	out := make(chan kv.WatchResponse)
	go func() {
		defer close(out)
		for resp := range in {
			var evs []kv.Event
			for _, e := range resp.Events {
				if e.Revision()%97 != 0 || e.KV.Key == "w/end" {
					evs = append(evs, e)
				}
			}
			resp.Events = evs
			n := 1
			if len(evs) > 0 && evs[0].Revision()%89 == 0 {
				n = 2
			}
			for range n {
				select {
				case out <- resp:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out
}

// TestWatchNegativeControl: a backend that drops and repeats events must be
// flagged, or the watch checks prove nothing.
func TestWatchNegativeControl(t *testing.T) {
	parallelShort(t)
	r := &report{t: t, start: time.Now(), files: map[string][]byte{}} // not failing the test
	store := memkv.New()
	t.Cleanup(func() { _ = store.Close() })
	watchTest(t, r, watchSetup{
		writers: 2, watchers: 1, keys: 8, duration: 300 * time.Millisecond,
		writer: func(int) kv.KV { return store },
		watch:  func(int) watchKV { return lossyWatch{store} },
		faults: func(ctx context.Context, _ *rand.Rand) { <-ctx.Done() },
	})
	fmt.Printf("FIGURE %s: faults=0 violations_flagged=%d skipped_or_dup_flagged=%d\n", t.Name(), len(r.violations), r.skipDup)
	if r.skipDup == 0 || len(r.violations) == 0 {
		t.Fatalf("a watch that drops and repeats events was not flagged: %d skipped or duplicated, %d violations", r.skipDup, len(r.violations))
	}
}
