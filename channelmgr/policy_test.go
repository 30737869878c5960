package channelmgr

import (
	"fmt"
	"slices"
	"testing"
)

func emptyNodes(ids ...int64) []NodeLoad {
	out := make([]NodeLoad, len(ids))
	for i, id := range ids {
		out[i] = NodeLoad{ID: id}
	}
	return out
}

// spreadOf places chs with p and returns per-node totals and per-collection
// per-node counts.
func spreadOf(t *testing.T, got []int64, chs []Channel, nodes []NodeLoad) (map[int64]int, map[int64]map[int64]int) {
	t.Helper()
	total := map[int64]int{}
	coll := map[int64]map[int64]int{}
	for _, n := range nodes {
		total[n.ID] = len(n.Channels)
		for _, c := range n.Channels {
			if coll[c.CollectionID] == nil {
				coll[c.CollectionID] = map[int64]int{}
			}
			coll[c.CollectionID][n.ID]++
		}
	}
	if len(got) != len(chs) {
		t.Fatalf("Place returned %d nodes for %d channels", len(got), len(chs))
	}
	for i, id := range got {
		if !slices.ContainsFunc(nodes, func(n NodeLoad) bool { return n.ID == id }) {
			t.Fatalf("channel %s placed on unknown node %d", chs[i].Name, id)
		}
		total[id]++
		if coll[chs[i].CollectionID] == nil {
			coll[chs[i].CollectionID] = map[int64]int{}
		}
		coll[chs[i].CollectionID][id]++
	}
	return total, coll
}

func maxMinusMin(m map[int64]int, nodes []NodeLoad) int {
	lo, hi := 1<<30, -1
	for _, n := range nodes {
		lo, hi = min(lo, m[n.ID]), max(hi, m[n.ID])
	}
	return hi - lo
}

func TestLeastLoadedSpread(t *testing.T) {
	// 300 channels of collections of uneven sizes on 7 nodes.
	var chs []Channel
	sizes := []int{120, 80, 50, 30, 13, 7}
	for coll, n := range sizes {
		for i := 0; i < n; i++ {
			chs = append(chs, Channel{Name: fmt.Sprintf("c%d_%03d", coll, i), CollectionID: int64(coll + 1)})
		}
	}
	nodes := emptyNodes(1, 2, 3, 4, 5, 6, 7)
	got := LeastLoaded().Place(chs, nodes)
	total, coll := spreadOf(t, got, chs, nodes)
	if d := maxMinusMin(total, nodes); d > 1 {
		t.Fatalf("node totals %v differ by %d", total, d)
	}
	for id, per := range coll {
		if d := maxMinusMin(per, nodes); d > 1 {
			t.Errorf("collection %d spread %v differs by %d", id, per, d)
		}
	}
}

func TestLeastLoadedFillsEmptyNodeFirst(t *testing.T) {
	nodes := []NodeLoad{{ID: 1, Channels: make([]Channel, 10)}, {ID: 2}, {ID: 3, Channels: make([]Channel, 4)}}
	chs := make([]Channel, 8)
	for i := range chs {
		chs[i] = Channel{Name: fmt.Sprintf("ch%d", i), CollectionID: 1}
	}
	total, _ := spreadOf(t, LeastLoaded().Place(chs, nodes), chs, nodes)
	// 22 channels: node 1 stays at 10, nodes 2 and 3 end at 6.
	if total[1] != 10 || total[2] != 6 || total[3] != 6 {
		t.Fatalf("totals %v, want 1:10 2:6 3:6", total)
	}
}

func TestWaterLevel(t *testing.T) {
	for _, tc := range []struct {
		loads        []int
		n            int
		level, extra int
	}{
		{[]int{0, 0, 0}, 7, 2, 1},
		{[]int{10, 0, 4}, 8, 6, 0},
		{[]int{10, 0, 4}, 9, 6, 1},
		{[]int{5, 5}, 1, 5, 1},
		{[]int{3}, 0, 3, 0},
		{[]int{1, 9}, 20, 15, 0},
	} {
		l, e := waterLevel(tc.loads, tc.n)
		if l != tc.level || e != tc.extra {
			t.Errorf("waterLevel(%v, %d) = %d,%d; want %d,%d", tc.loads, tc.n, l, e, tc.level, tc.extra)
		}
	}
}

func TestPlaceAvoid(t *testing.T) {
	for name, p := range map[string]Policy{"least-loaded": LeastLoaded(), "consistent-hash": ConsistentHash(0)} {
		t.Run(name, func(t *testing.T) {
			// Node 2 is empty, but the channel failed there.
			nodes := []NodeLoad{{ID: 1, Channels: make([]Channel, 3)}, {ID: 2}}
			for i := 0; i < 20; i++ {
				c := Channel{Name: fmt.Sprintf("x%d", i), Avoid: 2}
				if got := p.Place([]Channel{c}, nodes); got[0] != 1 {
					t.Fatalf("placed %s on %d, want 1 (avoid 2)", c.Name, got[0])
				}
			}
			// The avoided node is the only node: it must still be used.
			if got := p.Place([]Channel{{Name: "x", Avoid: 2}}, emptyNodes(2)); got[0] != 2 {
				t.Fatalf("only node: got %d", got[0])
			}
		})
	}
}

func loadsFromCounts(counts map[int64]int) []NodeLoad {
	var ids []int64
	for id := range counts {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var out []NodeLoad
	for _, id := range ids {
		n := NodeLoad{ID: id}
		for i := 0; i < counts[id]; i++ {
			n.Channels = append(n.Channels, Channel{Name: fmt.Sprintf("n%d_%d", id, i), CollectionID: int64(i % 3), Movable: true})
		}
		out = append(out, n)
	}
	return out
}

func TestBalanceStepFewestMoves(t *testing.T) {
	for _, tc := range []struct {
		counts map[int64]int
		moves  int
	}{
		{map[int64]int{1: 10, 2: 10, 3: 0}, 6},     // 7,7,6
		{map[int64]int{1: 5, 2: 5, 3: 5}, 0},       // balanced
		{map[int64]int{1: 6, 2: 5}, 0},             // within 1
		{map[int64]int{1: 30, 2: 0, 3: 0}, 20},     // 10,10,10
		{map[int64]int{1: 9, 2: 9, 3: 9, 4: 0}, 6}, // 7,7,7,6
	} {
		nodes := loadsFromCounts(tc.counts)
		moves := BalanceStep(nodes, 1000)
		if len(moves) != tc.moves {
			t.Errorf("%v: %d moves %v, want %d", tc.counts, len(moves), moves, tc.moves)
		}
		after := map[int64]int{}
		for id, c := range tc.counts {
			after[id] = c
		}
		for _, m := range moves {
			after[m.From]--
			after[m.To]++
		}
		if d := maxMinusMin(after, nodes); d > 1 {
			t.Errorf("%v: after moves %v differ by %d", tc.counts, after, d)
		}
	}
	// The cap limits one step.
	if moves := BalanceStep(loadsFromCounts(map[int64]int{1: 30, 2: 0}), 4); len(moves) != 4 {
		t.Fatalf("capped step: %d moves", len(moves))
	}
}

func TestBalanceStepOnlyMovable(t *testing.T) {
	nodes := []NodeLoad{
		{ID: 1, Channels: []Channel{{Name: "a"}, {Name: "b"}, {Name: "c"}, {Name: "d", Movable: true}}},
		{ID: 2},
	}
	moves := BalanceStep(nodes, 10)
	if len(moves) != 1 || moves[0] != (Move{Channel: "d", From: 1, To: 2}) {
		t.Fatalf("moves %v, want only d 1->2", moves)
	}
}

func TestConsistentHashSticky(t *testing.T) {
	p := ConsistentHash(0)
	var chs []Channel
	for i := 0; i < 500; i++ {
		chs = append(chs, Channel{Name: fmt.Sprintf("by-dev-dml_%d", i)})
	}
	before := p.Place(chs, emptyNodes(1, 2, 3, 4))
	again := p.Place(chs, emptyNodes(1, 2, 3, 4))
	if !slices.Equal(before, again) {
		t.Fatal("placement is not deterministic")
	}
	after := p.Place(chs, emptyNodes(1, 2, 3, 4, 5))
	moved := 0
	for i := range chs {
		if before[i] != after[i] {
			moved++
			if after[i] != 5 {
				t.Fatalf("%s moved %d -> %d: only moves to the new node are allowed", chs[i].Name, before[i], after[i])
			}
		}
	}
	// About a fifth should move; far fewer or more means a broken ring.
	if moved < 50 || moved > 170 {
		t.Fatalf("%d of 500 channels moved to the fifth node", moved)
	}
	// Balance moves exactly the channels whose owner changed.
	nodes := emptyNodes(1, 2, 3, 4, 5)
	for i, c := range chs {
		c.Movable = true
		nodes[before[i]-1].Channels = append(nodes[before[i]-1].Channels, c)
	}
	if moves := p.Balance(nodes, 1000); len(moves) != moved {
		t.Fatalf("balance proposes %d moves, want %d", len(moves), moved)
	}
}

// badPolicy answers with nodes it was not offered, or panics.
type badPolicy struct{ panics bool }

func (p badPolicy) Place(chs []Channel, nodes []NodeLoad) []int64 {
	if p.panics {
		panic("boom")
	}
	out := make([]int64, len(chs))
	for i := range out {
		out[i] = 12345
	}
	return out
}

func (p badPolicy) Balance(nodes []NodeLoad, maxMoves int) []Move {
	if p.panics {
		panic("boom")
	}
	return []Move{{Channel: "nope", From: 1, To: 2}}
}

// A policy that misbehaves falls back to least-loaded placement.
func TestBadPolicyFallsBack(t *testing.T) {
	for _, panics := range []bool{false, true} {
		t.Run(fmt.Sprint("panics=", panics), func(t *testing.T) {
			h := newHarness(t)
			ns := h.addNodes(2)
			h.lead(WithPolicy(badPolicy{panics: panics}))
			chs := names("ch", 6)
			h.register(1, chs...)
			h.eventually("placed by the fallback", func() bool { return h.allWatched(chs, ns[0].id, ns[1].id) })
			if c := h.counts(); c[ns[0].id] != 3 || c[ns[1].id] != 3 {
				t.Fatalf("fallback placement %v", c)
			}
		})
	}
}
