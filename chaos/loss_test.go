package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/channelmgr"
	"github.com/chanwatch/chanwatch/internal/netproxy"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/memkv"
)

// world is where the no-loss test runs: a backend for observers, and new
// process handles that can be partitioned and closed.
type world struct {
	name string
	obs  kv.Backend
	// handle returns a new process's backend, a switch that cuts it off
	// (true) or reconnects it (false), and its close.
	handle func(t testing.TB) (kv.Backend, func(bool), func())
	tm     timing
	etcd   *etcdCluster // for member kills (long version), else nil
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
	for step := range steps {
		if !pace(ctx, jitter(rng, w.tm.ttl/4, w.tm.ttl)) {
			return
		}
		switch k := rng.IntN(7); {
		case k == 0:
			i := rng.IntN(len(nodes))
			r.fault("step %d: node %s (id %d) killed", step, nodes[i].name, nodes[i].node.ID())
			l.crash(nodes[i].name)
			nodes[i].kill()
			nodes[i] = newNode()
		case k == 1:
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
			if err := w.etcd.kill(m); err != nil {
				t.Fatal(err)
			}
			pace(ctx, jitter(rng, w.tm.ttl/2, 2*w.tm.ttl))
			if err := w.etcd.restart(m); err != nil {
				t.Fatal(err)
			}
			r.note("etcd member %d restarted", m)
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
			dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := channelmgr.Deregister(dctx, w.obs, ch)
			cancel()
			if err != nil {
				t.Fatalf("deregister %s: %v", ch, err)
			}
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
	for _, c := range coords {
		c.stop()
	}
	for _, n := range nodes {
		n.stop()
	}
	l.figures()
}

func TestNoChannelLostMemkv(t *testing.T) {
	noLossTest(t, memWorld(t, 500*time.Millisecond), scale(12, 120))
}

func TestNoChannelLostEtcd(t *testing.T) {
	noLossTest(t, etcdWorld(t), scale(4, 60))
}

var _ = rand.IntN
