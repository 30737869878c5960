package channelmgr

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"pgregory.net/rapid"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
)

// setPlacement rewrites node n's session value with a capacity and labels,
// on its own lease, as a node that advertises them does.
func (h *harness) setPlacement(n *fakeNode, capacity float64, labels meta.Labels) {
	h.t.Helper()
	val, err := meta.EncodeNodeSession(meta.NodeSession{ID: n.id, State: meta.NodeServing, TTL: nodeTTL,
		StartTime: h.clk.Now(), Capacity: capacity, Labels: labels})
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.kv.Txn(h.ctx, kv.Txn{Then: []kv.Op{kv.OpPutLease(meta.NodeSessionKey(n.id), val, n.lease)}}); err != nil {
		h.t.Fatal(err)
	}
}

// registerSpecs registers specs as given.
func (h *harness) registerSpecs(specs ...meta.ChannelSpec) {
	h.t.Helper()
	for _, s := range specs {
		if err := Register(h.ctx, h.kv, s); err != nil {
			h.t.Fatal(err)
		}
	}
}

// rogue places every channel on the first node it is offered and moves
// every movable channel to the lowest node ID: it ignores labels.
type rogue struct{}

func (rogue) Place(chs []Channel, nodes []NodeLoad) []int64 {
	out := make([]int64, len(chs))
	for i := range out {
		out[i] = nodes[0].ID
	}
	return out
}

func (rogue) Balance(nodes []NodeLoad, maxMoves int) []Move {
	var mv []Move
	for _, n := range nodes[1:] {
		for _, c := range n.Channels {
			if c.Movable && len(mv) < maxMoves {
				mv = append(mv, Move{Channel: c.Name, From: n.ID, To: nodes[0].ID})
			}
		}
	}
	return mv
}

// A channel's required labels hold whatever the policy says: every ToWatch
// of a constrained channel, from placement, balance and failover, is on a
// node with its labels.
func TestRequiredLabelsHoldForEveryPolicy(t *testing.T) {
	for name, p := range map[string]Policy{"LeastLoaded": LeastLoaded(), "ConsistentHash": ConsistentHash(0),
		"Weighted": Weighted(), "rogue": rogue{}} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t)
			plain := h.addNode()
			ingest := h.addNodes(2)
			for _, n := range ingest {
				h.setPlacement(n, 0, meta.MustLabels("group=ingest"))
			}
			req := meta.MustLabels("group=ingest")
			var constrained, free []string
			for i := range 8 {
				constrained = append(constrained, fmt.Sprintf("ing%02d", i))
				free = append(free, fmt.Sprintf("free%02d", i))
				h.registerSpecs(meta.ChannelSpec{Name: constrained[i], CollectionID: 1, Require: req},
					meta.ChannelSpec{Name: free[i], CollectionID: 2})
			}
			c := h.lead(WithPolicy(p))
			h.advance(5*step, c)
			h.eventually("every channel Watched", func() bool { return h.allWatched(append(constrained, free...)) })
			// A node joins (balance), then an ingest node dies (failover).
			h.addNode()
			h.advance(5*step, c)
			ingest[0].crash()
			h.expireAndFence(ingest[0].id, c)
			h.advance(5*step, c)
			h.eventually("every channel Watched after the failover",
				func() bool { return h.allWatched(constrained, ingest[1].id) && h.allWatched(free) })
			ok := map[int64]bool{ingest[0].id: true, ingest[1].id: true}
			for _, ev := range h.events(meta.ChannelPrefix, 0, h.lastChannelRev()) {
				node, ch, err := meta.ParseChannelKey(ev.KV.Key)
				if err != nil || ev.Type != kv.EventPut || !strings.HasPrefix(ch, "ing") || node == 0 {
					continue
				}
				if !ok[node] {
					t.Fatalf("%s written on node %d (revision %d), which lacks group=ingest (plain node %d)", ch, node, ev.KV.ModRevision, plain.id)
				}
				// The rogue only asks to move channels to the plain node:
				// each such move is dropped before the channel is released.
				if info, err := meta.DecodeChannelInfo(ev.KV.Key, ev.KV.Value); name == "rogue" && err == nil && info.State == meta.ToRelease {
					t.Fatalf("%s released on node %d (revision %d) for a move the rogue policy asked for", ch, node, ev.KV.ModRevision)
				}
			}
		})
	}
}

// A channel no serving node may take waits in remaining, with the reason
// in its LastError and the gauge, and is placed once a node has its labels.
func TestUnplaceableChannelWaitsVisibly(t *testing.T) {
	h := newHarness(t)
	a := h.addNode()
	h.registerSpecs(meta.ChannelSpec{Name: "gpu0", CollectionID: 1, Require: meta.MustLabels("group=gpu")},
		meta.ChannelSpec{Name: "cpu0", CollectionID: 1})
	c := h.lead(WithPolicy(Weighted()))
	h.advance(3*step, c)
	h.eventually("the gpu channel to wait in remaining with its reason", func() bool {
		as := h.assignments()
		w := as["gpu0"]
		return w.node == 0 && strings.Contains(w.info.LastError, "group=gpu") && h.allWatched([]string{"cpu0"}, a.id)
	})
	if got := testutil.ToFloat64(c.m.unplaceable); got != 1 {
		t.Fatalf("channels_unplaceable = %v, want 1", got)
	}
	rev := h.lastChannelRev()
	h.advance(5*step, c)
	if got := h.lastChannelRev(); got != rev {
		t.Fatalf("a waiting channel was rewritten while nothing changed (revision %d -> %d)\n%s", rev, got, h.dump())
	}
	b := h.addNode()
	h.advance(2*step, c)
	if as := h.assignments(); as["gpu0"].node != 0 {
		t.Fatalf("gpu0 placed on node %d, which has no labels", as["gpu0"].node)
	}
	h.setPlacement(b, 0, meta.MustLabels("group=gpu"))
	h.advance(2*step, c)
	h.eventually("the gpu channel Watched on the gpu node", func() bool { return h.allWatched([]string{"gpu0"}, b.id) })
	h.advance(step, c)
	if got := testutil.ToFloat64(c.m.unplaceable); got != 0 {
		t.Fatalf("channels_unplaceable = %v after placement, want 0", got)
	}
}

// A node's capacity counts for Weighted: doubling it moves channels onto it.
func TestCapacityChangeRebalances(t *testing.T) {
	h := newHarness(t)
	nodes := h.addNodes(2)
	chs := names("w", 30)
	h.register(1, chs...)
	c := h.lead(WithPolicy(Weighted()), WithMaxMovesInFlight(4))
	h.advance(3*step, c)
	h.eventually("every channel Watched", func() bool { return h.allWatched(chs) })
	if n := h.counts(); n[nodes[0].id] != 15 || n[nodes[1].id] != 15 {
		t.Fatalf("counts %v, want 15 each", n)
	}
	h.setPlacement(nodes[1], 2, meta.Labels{})
	h.eventually("node 2 to take two thirds", func() bool {
		h.advance(step, c)
		n := h.counts()
		return n[nodes[1].id] == 20 && h.allWatched(chs)
	})
	rev := h.lastChannelRev()
	h.advance(10*step, c)
	if got := h.lastChannelRev(); got != rev {
		t.Fatalf("balanced cluster kept moving channels: %v", h.counts())
	}
}

type panicky struct{ rogue }

func (panicky) Place([]Channel, []NodeLoad) []int64 { panic("no") }

// PlaceConstrained runs any policy under the constraints, as the
// coordinator does, and survives a policy that panics or ignores labels.
func TestPlaceConstrained(t *testing.T) {
	nodes := []NodeLoad{{ID: 1}, {ID: 2, Labels: meta.MustLabels("group=ingest")}, {ID: 3, Labels: meta.MustLabels("group=ingest")}}
	var chs []Channel
	for i := range 12 {
		c := Channel{Name: fmt.Sprintf("c%02d", i), CollectionID: 1}
		if i%2 == 0 {
			c.Require = meta.MustLabels("group=ingest")
		}
		chs = append(chs, c)
	}
	chs = append(chs, Channel{Name: "gpu", Require: meta.MustLabels("group=gpu")})
	for name, p := range map[string]Policy{"LeastLoaded": LeastLoaded(), "ConsistentHash": ConsistentHash(0), "rogue": rogue{}, "panicky": panicky{}} {
		got := PlaceConstrained(p, chs, nodes)
		for i, id := range got {
			switch {
			case chs[i].Name == "gpu" && id != 0:
				t.Errorf("%s: gpu placed on node %d; no node has group=gpu", name, id)
			case chs[i].Name != "gpu" && id == 0:
				t.Errorf("%s: %s not placed", name, chs[i].Name)
			case !chs[i].Require.IsZero() && id == 1:
				t.Errorf("%s: %s placed on node 1, which lacks group=ingest", name, chs[i].Name)
			}
		}
	}
}

// A node's measured loads replace the spec's weights for Weighted: a
// channel measured far above the rest ends up nearly alone on its node.
func TestMeasuredLoadRebalances(t *testing.T) {
	h := newHarness(t)
	nodes := h.addNodes(2)
	chs := names("m", 10)
	h.register(1, chs...)
	c := h.lead(WithPolicy(Weighted()))
	h.advance(3*step, c)
	h.eventually("every channel Watched", func() bool { return h.allWatched(chs) })
	a := nodes[0]
	var heavy string
	loads := map[string]float64{}
	for ch, as := range h.assignments() {
		if as.node == a.id {
			loads[ch] = 1
			if heavy == "" || ch < heavy {
				heavy = ch
			}
		}
	}
	loads[heavy] = 20 // a: 24, the other node: 5
	val, err := meta.EncodeLoadReport(meta.LoadReport{Node: a.id, Time: h.clk.Now(), Loads: loads})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.kv.Txn(h.ctx, kv.Txn{Then: []kv.Op{kv.OpPutLease(meta.LoadKey(a.id), val, a.lease)}}); err != nil {
		t.Fatal(err)
	}
	h.eventually("the heavy channel to be left alone on its node", func() bool {
		h.advance(step, c)
		return h.counts()[a.id] == 1 && h.allWatched(chs)
	})
	if as := h.assignments()[heavy]; as.node != a.id {
		t.Fatalf("the heavy channel %s moved to node %d; the light ones should move", heavy, as.node)
	}
	rev := h.lastChannelRev()
	h.advance(10*step, c)
	if got := h.lastChannelRev(); got != rev {
		t.Fatalf("balanced by measured load, channels kept moving: %v", h.counts())
	}
}

// Whatever the policy, PlaceConstrained (the coordinator's grouping and
// checks) never puts a channel on a node without its required labels, and
// places every channel some node may take.
func TestPropertyPlaceConstrainedEveryPolicy(t *testing.T) {
	policies := []Policy{LeastLoaded(), ConsistentHash(16), Weighted(), rogue{}, panicky{}}
	rapid.Check(t, func(t *rapid.T) {
		nodes, chs := genCluster(t, true)
		p := policies[rapid.IntRange(0, len(policies)-1).Draw(t, "policy")]
		got := PlaceConstrained(p, chs, nodes)
		for i, id := range got {
			ok := slices.ContainsFunc(nodes, func(n NodeLoad) bool { return n.Meets(chs[i]) })
			if id == 0 {
				if ok {
					t.Fatalf("%T left %s unplaced though a node meets %v", p, chs[i].Name, chs[i].Require)
				}
				continue
			}
			j := slices.IndexFunc(nodes, func(n NodeLoad) bool { return n.ID == id })
			if j < 0 || !nodes[j].Meets(chs[i]) {
				t.Fatalf("%T placed %s on node %d, which does not meet %v", p, chs[i].Name, id, chs[i].Require)
			}
		}
	})
}

// A constrained channel whose only eligible node is quarantined waits in
// remaining, saying so, rather than going to a node without its labels;
// it goes back to that node as a probe once the quarantine runs out.
func TestConstrainedChannelWaitsOutQuarantine(t *testing.T) {
	h := newHarness(t)
	gpu := h.addNode()
	plain := h.addNode()
	h.setPlacement(gpu, 0, meta.MustLabels("group=gpu"))
	gpu.set(func(n *fakeNode) { n.failAll = true })
	h.registerSpecs(meta.ChannelSpec{Name: "g0", CollectionID: 1, Require: meta.MustLabels("group=gpu")})
	c := h.lead(WithPolicy(Weighted()), WithQuarantine(1, 20*time.Second, time.Minute))
	h.eventually("g0 to wait in remaining while its only node is quarantined", func() bool {
		h.advance(step, c)
		a := h.assignments()["g0"]
		return a.node == 0 && strings.Contains(a.info.LastError, "quarantined")
	})
	for _, ev := range h.events(meta.ChannelPrefix, 0, h.lastChannelRev()) {
		if node, _, err := meta.ParseChannelKey(ev.KV.Key); err == nil && node == plain.id {
			t.Fatalf("g0 written on the unlabelled node %d: %s", node, ev.KV.Value)
		}
	}
	gpu.set(func(n *fakeNode) { n.failAll = false })
	h.eventually("g0 Watched on the gpu node after its quarantine", func() bool {
		h.advance(step, c)
		return h.allWatched([]string{"g0"}, gpu.id)
	})
}
