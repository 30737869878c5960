package chaos

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/etcdkv"
	"github.com/chanwatch/chanwatch/kv/memkv"
	"github.com/chanwatch/chanwatch/kv/raftkv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/session"
)

// crashPoint wraps a coordinator's handle and kills the process at a chosen
// write: from then on nothing of it reaches the store, as if it had died
// there. With applied, the fatal txn is applied first and its answer lost
// (the process died after the server committed, before it heard back).
type crashPoint struct {
	kv.Backend
	at      func(t kv.Txn, guarded int) bool // the crash point: this txn, the guarded-th guarded txn
	applied bool

	mu      sync.Mutex
	guarded int
	dead    bool
	crashed chan struct{}
}

func (c *crashPoint) Txn(ctx context.Context, t kv.Txn) (kv.TxnResponse, error) {
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return kv.TxnResponse{}, fmt.Errorf("%w: crashed", kv.ErrUnavailable)
	}
	isGuarded := false
	for _, cmp := range t.If {
		// The leader guard, not the campaign's create-only compare.
		if cmp.Key == meta.CoordinatorKey && cmp.Target == kv.TargetCreateRevision && cmp.Num > 0 {
			isGuarded = true
		}
	}
	writes := false
	for _, op := range t.Then {
		writes = writes || op.IsWrite()
	}
	if isGuarded && writes {
		c.guarded++
		if c.at(t, c.guarded) {
			c.dead = true
			close(c.crashed)
			c.mu.Unlock()
			if c.applied {
				_, _ = c.Backend.Txn(ctx, t)
			}
			return kv.TxnResponse{}, fmt.Errorf("%w: crashed", kv.ErrUnknownOutcome)
		}
	}
	c.mu.Unlock()
	return c.Backend.Txn(ctx, t)
}

// crashEnv is a store for TestCoordinatorCrashPoints: handles on it (each
// with its close, the death of the process that holds it), an observer,
// and timing fit for the backend. Txns hold at most 8 ops.
type crashEnv struct {
	tm     timing
	handle func(t *testing.T, root string) (kv.Backend, func())
}

func crashEnvs(t *testing.T) map[string]func() crashEnv {
	return map[string]func() crashEnv{
		"mem": func() crashEnv {
			stores := map[string]*memkv.KV{}
			var mu sync.Mutex
			return crashEnv{tm: fastTiming(500 * time.Millisecond), handle: func(t *testing.T, root string) (kv.Backend, func()) {
				mu.Lock()
				defer mu.Unlock()
				st := stores[root]
				if st == nil {
					st = memkv.New(memkv.WithMaxTxnOps(8))
					t.Cleanup(func() { _ = st.Close() })
					stores[root] = st
				}
				h := st.NewClient()
				return h, func() { _ = h.Close() }
			}}
		},
		"etcd": func() crashEnv {
			e := startEtcd(t)
			return crashEnv{tm: fastTiming(2 * e.minTTL), handle: func(t *testing.T, root string) (kv.Backend, func()) {
				cli, _ := e.client(t, false)
				b, err := etcdkv.New(cli, root, etcdkv.WithMaxTxnOps(8))
				if err != nil {
					t.Fatal(err)
				}
				return b, func() { _ = b.Close(); _ = cli.Close() }
			}}
		},
		"raft": func() crashEnv {
			c := startRaft(t, 3, raftkv.WithMaxTxnOps(8))
			var mu sync.Mutex
			next := 0
			return crashEnv{tm: fastTiming(time.Second), handle: func(t *testing.T, root string) (kv.Backend, func()) {
				mu.Lock()
				i := next % 3
				next++
				mu.Unlock()
				b := c.handle(t, i, root)
				return b, func() { _ = b.Close() }
			}}
		},
	}
}

// TestCoordinatorCrashPoints kills the coordinator at each crash point of
// its write path and checks that a new coordinator converges with no channel
// run twice and none lost, on every backend (memkv; etcd; a 3-node raftkv
// cluster, the handles spread over its nodes):
//   - between the sub-txns of a batch larger than the max txn size (a
//     placement of many channels at startup, max 8 ops per txn), after the
//     first, second and fifth sub-txn, with the fatal txn applied or not;
//   - between a node's Released and the txn that deletes the old key and puts
//     ToWatch on the new node (a drain).
func TestCoordinatorCrashPoints(t *testing.T) {
	type tc struct {
		name    string
		at      func(t kv.Txn, guarded int) bool
		applied bool
		drain   bool
	}
	var cases []tc
	for _, n := range []int{1, 2, 5} {
		for _, applied := range []bool{false, true} {
			cases = append(cases, tc{name: fmt.Sprintf("batch-subtxn-%d-applied-%v", n, applied),
				at: func(_ kv.Txn, g int) bool { return g == n }, applied: applied})
		}
	}
	cases = append(cases, tc{name: "released-before-reassign", drain: true})
	envs := crashEnvs(t)
	for _, backend := range []string{"mem", "etcd", "raft"} {
		t.Run(backend, func(t *testing.T) {
			env := envs[backend]()
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					r := newReport(t)
					l := newLedger(r)
					tm := env.tm
					root := uniqueRoot(t)
					open := func() (kv.Backend, func()) { return env.handle(t, root) }
					store, closeObs := open()
					t.Cleanup(closeObs)
					var nodes []*member
					for i := range 3 {
						h, closeH := open()
						nodes = append(nodes, startNode(t, l, fmt.Sprint("n", i), h, closeH, tm))
					}
					eventually(t, 10*time.Second, "nodes registered", func() bool {
						ms, _, err := session.ListNodes(testCtx(t), store)
						return err == nil && len(ms) == 3
					})
					chs := channelNames("x", scale(40, 200))
					registerChannels(t, store, chs...)

					at := c.at
					if c.drain {
						// Place everything first, with a coordinator that does not
						// crash; then drain node 0 and crash at the reassigning txn.
						h, closeH := open()
						first := startCoord(t, "c0", h, closeH, tm)
						awaitConvergence(t, r, store, nodes, l, tm.ttl, 20*time.Second, time.Now())
						first.stop()
						drained := nodes[0].node.ID()
						prefix := meta.NodePrefix(drained)
						at = func(t kv.Txn, _ int) bool {
							for _, op := range t.Then {
								if op.Type == kv.OpTypeDelete && strings.HasPrefix(op.Key, prefix) {
									return true
								}
							}
							return false
						}
						if err := session.Drain(testCtx(t), store, drained); err != nil {
							t.Fatal(err)
						}
					}
					h, closeH := open()
					cp := &crashPoint{Backend: h, at: at, applied: c.applied, crashed: make(chan struct{})}
					victim := startCoord(t, "victim", cp, closeH, tm)
					select {
					case <-cp.crashed:
					case <-time.After(20 * time.Second):
						t.Fatal("the crash point was never reached")
					}
					r.fault("coordinator killed at the crash point")
					victim.kill()
					crashed := time.Now()
					h2, closeH2 := open()
					next := startCoord(t, "next", h2, closeH2, tm)
					live := nodes
					if c.drain {
						live = nodes[1:]
						eventually(t, 20*time.Second, "the drained node emptied", func() bool { return len(nodes[0].node.Running()) == 0 })
					}
					awaitConvergence(t, r, store, live, l, tm.ttl, 30*time.Second, crashed)
					next.stop()
					for _, n := range nodes {
						n.stop()
					}
					l.figures()
				})
			}
		})
	}
}
