package channelmgr

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
)

// simulatingPolicy is a Balance that works on the loads it is given, as a
// policy may: it takes its move's channel out of the source's Channels
// (slices.Delete, which shifts the rest and zeroes the tail in place) and
// appends it to the target's; or, when force, marks every channel it was
// given Movable first (a policy that "normalizes" its input).
type simulatingPolicy struct {
	leastLoaded
	force bool
	move  string // the channel to move ("": the source's first Movable)
}

func (p simulatingPolicy) Balance(nodes []NodeLoad, _ int) []Move {
	if p.force {
		for i := range nodes {
			for j := range nodes[i].Channels {
				nodes[i].Channels[j].Movable = true
			}
		}
	}
	src, dst := 0, 0
	for i := range nodes {
		if len(nodes[i].Channels) > len(nodes[src].Channels) {
			src = i
		}
		if len(nodes[i].Channels) < len(nodes[dst].Channels) {
			dst = i
		}
	}
	if len(nodes[src].Channels)-len(nodes[dst].Channels) <= 1 {
		return nil
	}
	j := slices.IndexFunc(nodes[src].Channels, func(c Channel) bool {
		return c.Movable && (p.move == "" || c.Name == p.move)
	})
	if j < 0 {
		return nil
	}
	c := nodes[src].Channels[j]
	if !p.force {
		nodes[src].Channels = slices.Delete(nodes[src].Channels, j, j+1)
		nodes[dst].Channels = append(nodes[dst].Channels, c)
	}
	return []Move{{Channel: c.Name, From: nodes[src].ID, To: nodes[dst].ID}}
}

// movableStore writes serving nodes 1..nodes and, for each of chans, a
// key on node 1 in state st (stale: written before node 1's session, for
// an earlier holder of its ID).
func movableStore(t *testing.T, h *harness, nodes int, chans map[string]meta.State, stale string) {
	t.Helper()
	put := func(ch string, st meta.State) {
		h.register(1, ch)
		v, err := meta.EncodeChannelInfo(meta.ChannelInfo{Name: ch, CollectionID: 1, State: st, StartTime: h.clk.Now(), AssignRevision: 1})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(h.ctx, h.kv, meta.ChannelKey(1, ch), v); err != nil {
			t.Fatal(err)
		}
	}
	if stale != "" {
		put(stale, meta.Watched)
	}
	for id := 1; id <= nodes; id++ {
		lease, err := h.kv.Grant(h.ctx, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		v, err := meta.EncodeNodeSession(meta.NodeSession{ID: int64(id), StartTime: h.clk.Now(), State: meta.NodeServing, TTL: nodeTTL})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.kv.Txn(h.ctx, kv.Txn{Then: []kv.Op{kv.OpPutLease(meta.NodeSessionKey(int64(id)), v, lease)}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, ch := range slices.Sorted(mapKeys(chans)) {
		put(ch, chans[ch])
	}
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func unitsOf(p *plan) string {
	var out []string
	for _, u := range p.units {
		out = append(out, fmt.Sprintf("%s %v", u.ch, u.ops))
	}
	return strings.Join(out, "\n")
}

// A policy's Balance gets copies of the pass's node loads that share their
// Channels arrays with the pass. A policy that simulates its move on them
// (deletes the channel from the source's list) must still have the move
// carried out: the coordinator checks a move against what it decided, not
// against what the policy left in the loads.
func TestBalanceMoveSurvivesAPolicyEditingItsLoads(t *testing.T) {
	h := newHarness(t)
	movableStore(t, h, 2, map[string]meta.State{"a": meta.Watched, "b": meta.Watched, "c": meta.Watched, "d": meta.Watched}, "")
	r := newTestReconciler(t, h, WithPolicy(simulatingPolicy{}))
	p := r.decide(h.clk.Now())
	if len(p.units) != 1 || !strings.Contains(unitsOf(p), meta.ChannelKey(1, "a")) {
		t.Fatalf("want the policy's move of a off node 1, got units:\n%s", unitsOf(p))
	}
}

// A move of a channel the pass did not mark Movable is dropped, even when
// the policy marked it Movable in the loads it was given: here a channel
// starting on its node (ToWatch) and one whose key predates its node's
// session (the node ignores a write to it: a release would time out and
// evict a healthy node).
func TestBalanceDropsAMoveTheCoordinatorDidNotOffer(t *testing.T) {
	for _, tc := range []struct {
		name   string
		chans  map[string]meta.State
		stale  string
		target string
	}{
		{"starting", map[string]meta.State{"a": meta.ToWatch, "b": meta.Watched, "c": meta.Watched, "d": meta.Watched}, "", "a"},
		{"stale", map[string]meta.State{"b": meta.Watched, "c": meta.Watched, "d": meta.Watched}, "a", "a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			movableStore(t, h, 2, tc.chans, tc.stale)
			r := newTestReconciler(t, h, WithPolicy(simulatingPolicy{force: true, move: tc.target}))
			p := r.decide(h.clk.Now())
			if s := unitsOf(p); strings.Contains(s, meta.ChannelKey(1, tc.target)) && strings.Contains(s, "ToRelease") {
				t.Fatalf("released %s, which the pass did not mark Movable:\n%s", tc.target, s)
			}
			for _, u := range p.units {
				if u.ch == tc.target {
					for _, op := range u.ops {
						if op.Type == kv.OpTypePut && op.Key == meta.ChannelKey(1, tc.target) {
							t.Fatalf("balance wrote %s's key: %s", tc.target, op.Value)
						}
					}
				}
			}
		})
	}
}
