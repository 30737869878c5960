package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/channelmgr"
	"github.com/chanwatch/chanwatch/internal/netproxy"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/memkv"
	"github.com/chanwatch/chanwatch/kv/raftkv"
)

// world is where the no-loss test runs: a backend for observers, and new
// process handles that can be partitioned and closed.
type world struct {
	name string
	obs  kv.Backend
	// handle returns a new process's backend, a switch that cuts it off
	// (true) or reconnects it (false; nil: the world cannot cut a
	// process off), and its close.
	handle func(t testing.TB) (kv.Backend, func(bool), func())
	tm     timing
	etcd   *etcdCluster // for member kills (long version), else nil
	raft   *raftWorld   // for raftkv leader kills, else nil
}

func memWorld(t testing.TB, ttl time.Duration) *world {
	store := memkv.New()
	t.Cleanup(func() { _ = store.Close() })
	return &world{name: "memkv", obs: store, tm: fastTiming(ttl), handle: func(testing.TB) (kv.Backend, func(bool), func()) {
		h := store.NewClient()
		var release func()
		return h, func(cut bool) {
			if cut {
				release = h.Hang()
			} else if release != nil {
				release()
			}
		}, func() { _ = h.Close() }
	}}
}

func etcdWorld(t testing.TB) *world {
	etcd := startEtcd(t)
	root := uniqueRoot(t)
	cli, _ := etcd.client(t, false)
	return &world{name: "etcd", obs: etcd.backend(t, cli, root), tm: fastTiming(2 * etcd.minTTL), etcd: etcd,
		handle: func(t testing.TB) (kv.Backend, func(bool), func()) {
			cli, ps := etcd.client(t, true)
			b := etcd.backend(t, cli, root)
			return b, func(cut bool) {
					if cut {
						setMode(ps, netproxy.Blackhole)
					} else {
						setMode(ps, netproxy.Pass)
					}
				}, func() {
					_ = b.Close()
					_ = cli.Close()
				}
		}}
}

// noLossTest runs seeded random faults (node kills, node partitions,
// coordinator failovers, etcd member kills) while channels are registered and
// deregistered; after the faults heal every registered channel must be
// Watched on exactly one live node, and every node's Running() must equal the
// store.
func noLossTest(t *testing.T, w *world, steps int) {
	r := newReport(t)
	l := newLedger(r)
	rng := newRand(t)
	ctx := testCtx(t)
	type proc struct {
		*member
		cut func(bool)
	}
	seq := 0
	newNode := func() *proc {
		seq++
		b, cut, closeFn := w.handle(t)
		return &proc{startNode(t, l, fmt.Sprintf("n%d", seq), b, closeFn, w.tm), cut}
	}
	newCoord := func() *proc {
		seq++
		b, cut, closeFn := w.handle(t)
		return &proc{startCoord(t, fmt.Sprintf("c%d", seq), b, closeFn, w.tm), cut}
	}
	nodes := []*proc{newNode(), newNode(), newNode()}
	coords := []*proc{newCoord(), newCoord()}
	members := func() []*member {
		var out []*member
		for _, n := range nodes {
			out = append(out, n.member)
		}
		return out
	}
	registered := channelNames(w.name+"-", 16)
	registerChannels(t, w.obs, registered...)
	awaitConvergence(t, r, w.obs, members(), l, w.tm.ttl, 30*time.Second, time.Now())

	next := 100
	storeKills := 0
	canKill := w.raft != nil || w.etcd != nil && w.etcd.kill != nil
	for step := range steps {
		if !pace(ctx, jitter(rng, w.tm.ttl/4, w.tm.ttl)) {
			return
		}
		k := rng.IntN(7)
		// Every run kills the store at least once where the world can.
		if step == steps-1 && storeKills == 0 && canKill {
			k = 3
		}
		switch {
		case k == 0:
			i := rng.IntN(len(nodes))
			r.fault("step %d: node %s (id %d) killed", step, nodes[i].name, nodes[i].node.ID())
			l.crash(nodes[i].name)
			nodes[i].kill()
			nodes[i] = newNode()
		case k == 1 && nodes[0].cut != nil:
			i := rng.IntN(len(nodes))
			r.fault("step %d: node %s (id %d) cut off for 1.5 TTL", step, nodes[i].name, nodes[i].node.ID())
			nodes[i].cut(true)
			pace(ctx, 3*w.tm.ttl/2)
			nodes[i].cut(false)
		case k == 2:
			for i, c := range coords {
				if c.coord.IsLeader() {
					r.fault("step %d: leading coordinator %s killed", step, c.name)
					c.kill()
					coords[i] = newCoord()
					break
				}
			}
		case k == 3 && w.etcd != nil && w.etcd.kill != nil:
			m := rng.IntN(w.etcd.members())
			r.fault("step %d: etcd member %d SIGKILL", step, m)
			storeKills++
			if err := w.etcd.kill(m); err != nil {
				t.Fatal(err)
			}
			pace(ctx, jitter(rng, w.tm.ttl/2, 2*w.tm.ttl))
			if err := w.etcd.restart(m); err != nil {
				t.Fatal(err)
			}
			r.note("etcd member %d restarted", m)
		case k == 3 && w.raft != nil:
			// The members embedded in the leader's process die with it.
			host := w.raft.c.Leader()
			if host < 0 {
				continue
			}
			r.fault("step %d: raftkv leader %d killed with its members", step, host)
			storeKills++
			w.raft.rebindObs(t, host)
			var deadNodes, deadCoords []int
			for i, n := range nodes {
				if w.raft.hostOf(n.b) == host {
					r.note("node %s (id %d) dies with raftkv node %d", n.name, n.node.ID(), host)
					l.crash(n.name)
					n.kill()
					deadNodes = append(deadNodes, i)
				}
			}
			for i, c := range coords {
				if w.raft.hostOf(c.b) == host {
					r.note("coordinator %s dies with raftkv node %d", c.name, host)
					c.kill()
					deadCoords = append(deadCoords, i)
				}
			}
			if err := w.raft.c.Kill(host); err != nil {
				t.Fatal(err)
			}
			pace(ctx, jitter(rng, w.tm.ttl/2, 2*w.tm.ttl))
			if err := w.raft.c.Restart(host); err != nil {
				t.Fatal(err)
			}
			r.note("raftkv node %d restarted", host)
			for _, i := range deadNodes {
				nodes[i] = newNode()
			}
			for _, i := range deadCoords {
				coords[i] = newCoord()
			}
		case k <= 4:
			chs := channelNames(fmt.Sprintf("%s-%d-", w.name, next), 2)
			next++
			r.note("step %d: register %v", step, chs)
			registerChannels(t, w.obs, chs...)
			registered = append(registered, chs...)
		default:
			if len(registered) < 4 {
				continue
			}
			i := rng.IntN(len(registered))
			ch := registered[i]
			r.note("step %d: deregister %s", step, ch)
			retryIdempotent(t, "deregister "+ch, channelmgr.ErrNotRegistered, func(ctx context.Context) error {
				return channelmgr.Deregister(ctx, w.obs, ch)
			})
			registered = slices.Delete(registered, i, i+1)
		}
	}
	healed := time.Now()
	r.note("faults over")
	awaitConvergence(t, r, w.obs, members(), l, w.tm.ttl, 60*time.Second, healed)
	v, err := readView(ctx, w.obs)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.registered) != len(registered) {
		r.violate("the registry holds %d channels, the test registered %d", len(v.registered), len(registered))
	}
	r.figure("channels", len(registered))
	if canKill {
		r.figure("store_kills", storeKills)
	}
	for _, c := range coords {
		c.stop()
	}
	for _, n := range nodes {
		n.stop()
	}
	l.figures()
}

// raftWorld places each process's handle on one node of a 3-node raftkv
// cluster, round robin: a process embedded in that node's process.
type raftWorld struct {
	c    *raftkv.Cluster
	root string

	mu   sync.Mutex
	next int
	host map[kv.Backend]int
	w    *world
}

func raftkvWorld(t testing.TB, ttl time.Duration) *world {
	c, err := raftkv.StartCluster(t.TempDir(), 3, raftkv.WithUnsafeNoFsync(true))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	rw := &raftWorld{c: c, root: uniqueRoot(t), host: map[kv.Backend]int{}}
	w := &world{name: "raftkv", tm: fastTiming(ttl), raft: rw}
	rw.w = w
	w.obs = rw.client(t, 0)
	w.handle = func(t testing.TB) (kv.Backend, func(bool), func()) {
		rw.mu.Lock()
		i := rw.next % c.Len()
		rw.next++
		rw.mu.Unlock()
		b := rw.client(t, i)
		return b, nil, func() { _ = b.Close() }
	}
	return w
}

// client opens a handle on node i under the world's root.
func (rw *raftWorld) client(t testing.TB, i int) kv.Backend {
	t.Helper()
	b, err := rw.c.Node(i).ClientAt(rw.root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	rw.mu.Lock()
	rw.host[b] = i
	rw.mu.Unlock()
	return b
}

func (rw *raftWorld) hostOf(b kv.Backend) int {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	if i, ok := rw.host[b]; ok {
		return i
	}
	return -1
}

// rebindObs moves the observer off node host, which is about to die (the
// observer stands for the test, which no fault touches).
func (rw *raftWorld) rebindObs(t testing.TB, host int) {
	if rw.hostOf(rw.w.obs) == host {
		rw.w.obs = rw.client(t, (host+1)%rw.c.Len())
	}
}

func TestNoChannelLostMemkv(t *testing.T) {
	noLossTest(t, memWorld(t, 500*time.Millisecond), scale(12, 120))
}

func TestNoChannelLostEtcd(t *testing.T) {
	noLossTest(t, etcdWorld(t), scale(4, 60))
}

// TestNoChannelLostRaftkv: the no-loss test on a 3-node raftkv cluster,
// every process embedded in one of its nodes. Faults: node kills,
// coordinator kills, and the raftkv leader killed with every process
// embedded in it, then restarted from its directory. raftkv has no way to
// cut one handle off, so there are no partitions here.
func TestNoChannelLostRaftkv(t *testing.T) {
	noLossTest(t, raftkvWorld(t, time.Second), scale(8, 90))
}

var _ = rand.IntN
