package channelmgr

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"testing"

	"pgregory.net/rapid"

	"github.com/chanwatch/chanwatch/meta"
)

// applyPlace returns nodes with chs added where got says (0: not placed).
func applyPlace(nodes []NodeLoad, chs []Channel, got []int64) []NodeLoad {
	out := cloneNodes(nodes)
	for i, id := range got {
		for j := range out {
			if out[j].ID == id {
				c := chs[i]
				c.Movable, c.Avoid = true, 0
				out[j].Channels = append(out[j].Channels, c)
			}
		}
	}
	return out
}

func cloneNodes(nodes []NodeLoad) []NodeLoad {
	out := make([]NodeLoad, len(nodes))
	for i, n := range nodes {
		out[i] = n
		out[i].Channels = slices.Clone(n.Channels)
	}
	return out
}

// applyMoves applies moves, failing on one that names a channel not on
// From or not Movable, or moves a channel twice.
func applyMoves(t interface{ Fatalf(string, ...any) }, nodes []NodeLoad, moves []Move) []NodeLoad {
	out := cloneNodes(nodes)
	at := map[int64]int{}
	for i, n := range out {
		at[n.ID] = i
	}
	seen := map[string]bool{}
	for _, mv := range moves {
		if seen[mv.Channel] {
			t.Fatalf("channel %s moved twice in one step", mv.Channel)
		}
		seen[mv.Channel] = true
		fi, ok1 := at[mv.From]
		ti, ok2 := at[mv.To]
		if !ok1 || !ok2 || mv.From == mv.To {
			t.Fatalf("move %+v between unknown nodes", mv)
		}
		j := slices.IndexFunc(out[fi].Channels, func(c Channel) bool { return c.Name == mv.Channel })
		if j < 0 || !out[fi].Channels[j].Movable {
			t.Fatalf("move %+v: channel not movable on its From node", mv)
		}
		c := out[fi].Channels[j]
		if !out[ti].Meets(c) {
			t.Fatalf("move %+v: node %d does not meet require %v", mv, mv.To, c.Require)
		}
		out[fi].Channels = slices.Delete(out[fi].Channels, j, j+1)
		out[ti].Channels = append(out[ti].Channels, c)
	}
	return out
}

// maxOverMean is the largest utilisation over total load / total capacity.
func maxOverMean(nodes []NodeLoad) float64 {
	var load, capacity, hi float64
	for _, n := range nodes {
		load += n.Load()
		capacity += n.capacity()
		hi = math.Max(hi, n.Utilisation())
	}
	if load == 0 {
		return 1
	}
	return hi / (load / capacity)
}

// outside is the load outside the band of Weighted.
func outside(nodes []NodeLoad) float64 {
	var load, capacity, ex float64
	for _, n := range nodes {
		load += n.Load()
		capacity += n.capacity()
	}
	mean := load / capacity
	for _, n := range nodes {
		l := n.Load()
		ex += math.Max(0, l-mean*(1+WeightedTolerance)*n.capacity()) + math.Max(0, mean*(1-WeightedTolerance)*n.capacity()-l)
	}
	return ex
}

func TestWeightedPlacesByUtilisation(t *testing.T) {
	nodes := []NodeLoad{{ID: 1, Capacity: 1}, {ID: 2, Capacity: 2}, {ID: 3, Capacity: 4}, {ID: 4}}
	var chs []Channel
	for i := range 400 {
		chs = append(chs, Channel{Name: fmt.Sprintf("c%03d", i), CollectionID: int64(i % 7), Weight: float64(1 + i%10)})
	}
	got := Weighted().Place(chs, nodes)
	after := applyPlace(nodes, chs, got)
	if r := maxOverMean(after); r > 1.02 {
		t.Fatalf("max/mean utilisation %.3f after placement, want <= 1.02: %v", r, utils(after))
	}
	// LeastLoaded counts channels: the capacity-4 node gets as many as the
	// capacity-1 node.
	ll := applyPlace(nodes, chs, LeastLoaded().Place(chs, nodes))
	if r := maxOverMean(ll); r < 1.5 {
		t.Fatalf("LeastLoaded max/mean %.3f: the comparison input is not skewed", r)
	}
}

func utils(nodes []NodeLoad) map[int64]float64 {
	out := map[int64]float64{}
	for _, n := range nodes {
		out[n.ID] = math.Round(n.Utilisation()*1000) / 1000
	}
	return out
}

func TestWeightedRequireAndSpread(t *testing.T) {
	nodes := []NodeLoad{
		{ID: 1, Labels: meta.MustLabels("zone=a", "group=ingest")},
		{ID: 2, Labels: meta.MustLabels("zone=b", "group=ingest")},
		{ID: 3, Labels: meta.MustLabels("zone=c")},
		{ID: 4, Labels: meta.MustLabels("zone=a")},
	}
	chs := []Channel{
		{Name: "ing-0", CollectionID: 1, Require: meta.MustLabels("group=ingest")},
		{Name: "ing-1", CollectionID: 1, Require: meta.MustLabels("group=ingest")},
		{Name: "ing-2", CollectionID: 1, Require: meta.MustLabels("group=ingest")},
		{Name: "gpu", CollectionID: 2, Require: meta.MustLabels("group=gpu")},
		{Name: "z-0", CollectionID: 3, Spread: "zone"},
		{Name: "z-1", CollectionID: 3, Spread: "zone"},
		{Name: "z-2", CollectionID: 3, Spread: "zone"},
	}
	got := Weighted().Place(chs, nodes)
	for i, id := range got[:3] {
		if id != 1 && id != 2 {
			t.Fatalf("%s placed on node %d, which lacks group=ingest", chs[i].Name, id)
		}
	}
	if got[3] != 0 {
		t.Fatalf("gpu channel placed on node %d; no node has group=gpu, want 0", got[3])
	}
	zones := map[string]bool{}
	for i := 4; i < 7; i++ {
		z, _ := nodes[slices.IndexFunc(nodes, func(n NodeLoad) bool { return n.ID == got[i] })].Labels.Get("zone")
		zones[z] = true
	}
	if len(zones) != 3 {
		t.Fatalf("collection 3 with spread=zone placed on zones %v, want all three", slices.Sorted(maps.Keys(zones)))
	}
}

func TestWeightedBalanceCapacityChange(t *testing.T) {
	// Balanced on equal capacities; node 3 doubles its capacity.
	nodes := []NodeLoad{{ID: 1}, {ID: 2}, {ID: 3}}
	var chs []Channel
	for i := range 90 {
		chs = append(chs, Channel{Name: fmt.Sprintf("c%02d", i), CollectionID: 1})
	}
	placed := applyPlace(nodes, chs, Weighted().Place(chs, nodes))
	if mv := Weighted().Balance(placed, 100); mv != nil {
		t.Fatalf("balanced cluster: Balance = %v, want nil", mv)
	}
	placed[2].Capacity = 2
	mv := Weighted().Balance(placed, 100)
	after := applyMoves(t, placed, mv)
	// Target 22.5/22.5/45 of 90; the band is 5% either side: nodes 1 and
	// 2 at most 23.625, node 3 at least 42.75.
	if r := maxOverMean(after); r > 1+WeightedTolerance {
		t.Fatalf("max/mean %.3f after %d moves, want <= %.2f: %v", r, len(mv), 1+WeightedTolerance, utils(after))
	}
	if len(mv) != 14 { // nodes 1 and 2 from 30 to 23, the most inside the band
		t.Fatalf("%d moves, want 14: %v", len(mv), mv)
	}
	for _, m := range mv {
		if m.To != 3 {
			t.Fatalf("move %+v: every move should go to the grown node", m)
		}
	}
}

// genCluster draws nodes (capacities, labels) and channels (weights,
// collections, constraints) small enough for rapid to shrink.
func genCluster(t *rapid.T, labelled bool) ([]NodeLoad, []Channel) {
	nn := rapid.IntRange(1, 8).Draw(t, "nodes")
	nodes := make([]NodeLoad, nn)
	for i := range nodes {
		nodes[i] = NodeLoad{ID: int64(i + 1), Capacity: float64(rapid.IntRange(1, 4).Draw(t, "cap"))}
		if labelled {
			l := []string{"zone=" + rapid.SampledFrom([]string{"a", "b", "c"}).Draw(t, "zone")}
			if g := rapid.SampledFrom([]string{"", "ingest", "query"}).Draw(t, "group"); g != "" {
				l = append(l, "group="+g)
			}
			nodes[i].Labels = meta.MustLabels(l...)
		}
	}
	nc := rapid.IntRange(0, 60).Draw(t, "channels")
	chs := make([]Channel, nc)
	for i := range chs {
		chs[i] = Channel{Name: fmt.Sprintf("ch-%03d", i), CollectionID: int64(rapid.IntRange(1, 5).Draw(t, "coll")),
			Weight: float64(rapid.IntRange(1, 50).Draw(t, "weight"))}
		if labelled {
			if g := rapid.SampledFrom([]string{"", "", "ingest", "query", "gpu"}).Draw(t, "require"); g != "" {
				chs[i].Require = meta.MustLabels("group=" + g)
			}
			if rapid.Bool().Draw(t, "spread") {
				chs[i].Spread = "zone"
			}
		}
	}
	return nodes, chs
}

// Constraints are never violated: a channel is placed on a node that meets
// its Require, or not at all when none does, and every balance move goes to
// a node that meets it; and every move brings the nodes closer to the band.
func TestWeightedPropertyConstraints(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		nodes, chs := genCluster(t, true)
		got := Weighted().Place(chs, nodes)
		if len(got) != len(chs) {
			t.Fatalf("Place returned %d answers for %d channels", len(got), len(chs))
		}
		for i, id := range got {
			anyMeets := slices.ContainsFunc(nodes, func(n NodeLoad) bool { return n.Meets(chs[i]) })
			if id == 0 {
				if anyMeets {
					t.Fatalf("%s not placed though a node meets %v", chs[i].Name, chs[i].Require)
				}
				continue
			}
			j := slices.IndexFunc(nodes, func(n NodeLoad) bool { return n.ID == id })
			if j < 0 || !nodes[j].Meets(chs[i]) {
				t.Fatalf("%s placed on node %d, which does not meet %v", chs[i].Name, id, chs[i].Require)
			}
		}
		placed := applyPlace(nodes, chs, got)
		budget := rapid.IntRange(1, 20).Draw(t, "budget")
		mv := Weighted().Balance(placed, budget)
		if len(mv) > budget {
			t.Fatalf("%d moves over the budget %d", len(mv), budget)
		}
		cur := placed
		for _, m := range mv {
			next := applyMoves(t, cur, []Move{m})
			if outside(next) >= outside(cur)-1e-9 {
				t.Fatalf("move %+v does not reduce the load outside the band (%.3f -> %.3f)", m, outside(cur), outside(next))
			}
			cur = next
		}
	})
}

// The same input gives the same answer.
func TestWeightedPropertyDeterministic(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		nodes, chs := genCluster(t, rapid.Bool().Draw(t, "labelled"))
		a := Weighted().Place(slices.Clone(chs), cloneNodes(nodes))
		b := Weighted().Place(slices.Clone(chs), cloneNodes(nodes))
		if !slices.Equal(a, b) {
			t.Fatalf("Place differs between two calls: %v vs %v", a, b)
		}
		placed := applyPlace(nodes, chs, a)
		m1 := Weighted().Balance(cloneNodes(placed), 50)
		m2 := Weighted().Balance(cloneNodes(placed), 50)
		if !slices.Equal(m1, m2) {
			t.Fatalf("Balance differs between two calls: %v vs %v", m1, m2)
		}
	})
}

// countBound is the fewest moves that bring unit-weight channels on
// unit-capacity nodes into the band: the larger of the channels above it
// and the room below it.
func countBound(counts []int) int {
	total := 0
	for _, c := range counts {
		total += c
	}
	mean := float64(total) / float64(len(counts))
	hi, lo := int(math.Floor(mean*(1+WeightedTolerance))), int(math.Ceil(mean*(1-WeightedTolerance)))
	over, under := 0, 0
	for _, c := range counts {
		over += max(0, c-hi)
		under += max(0, lo-c)
	}
	return max(over, under)
}

// Minimum moves on a join and a leave, with unit weights and capacities:
// a leave moves only the leaving node's channels (Place), after which
// Balance has nothing to do; a join moves exactly the fewest channels that
// bring every node into the band.
func TestWeightedPropertyMinimumMoves(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		nn := rapid.IntRange(2, 8).Draw(t, "nodes")
		nc := rapid.IntRange(20*(nn+1), 60*(nn+1)).Draw(t, "channels") // the band holds an integer count
		nodes := emptyNodes()
		for i := range nn {
			nodes = append(nodes, NodeLoad{ID: int64(i + 1)})
		}
		chs := make([]Channel, nc)
		for i := range chs {
			chs[i] = Channel{Name: fmt.Sprintf("ch-%04d", i), CollectionID: int64(i % 3)}
		}
		placed := applyPlace(nodes, chs, Weighted().Place(chs, nodes))
		if mv := Weighted().Balance(placed, nc); mv != nil {
			t.Fatalf("Balance right after Place moved %d channels", len(mv))
		}
		// Leave: the node's channels are placed on the others; nothing else moves.
		gone := rapid.IntRange(0, nn-1).Draw(t, "leaving")
		orphans := placed[gone].Channels
		rest := slices.Delete(cloneNodes(placed), gone, gone+1)
		after := applyPlace(rest, orphans, Weighted().Place(orphans, rest))
		if mv := Weighted().Balance(after, nc); mv != nil {
			t.Fatalf("after a leave, Balance moved %d more channels than the %d orphans: %v", len(mv), len(orphans), mv)
		}
		// Join: an empty node.
		joined := append(cloneNodes(placed), NodeLoad{ID: 100})
		counts := make([]int, len(joined))
		for i, n := range joined {
			counts[i] = len(n.Channels)
		}
		mv := Weighted().Balance(joined, nc)
		final := applyMoves(t, joined, mv)
		if want := countBound(counts); len(mv) != want {
			t.Fatalf("join: %d moves, want the minimum %d (counts %v)", len(mv), want, counts)
		}
		if outside(final) > 1e-9 {
			t.Fatalf("join: nodes still outside the band after %d moves: %v", len(mv), utils(final))
		}
	})
}

func TestWeightedZeroWeightsCountOne(t *testing.T) {
	n := NodeLoad{ID: 1, Channels: []Channel{{Name: "a"}, {Name: "b", Weight: 3}}}
	if n.Load() != 4 || n.Utilisation() != 4 {
		t.Fatalf("Load %v, Utilisation %v; want 4, 4", n.Load(), n.Utilisation())
	}
	if !n.Meets(Channel{}) || n.Meets(Channel{Require: meta.MustLabels("zone=a")}) {
		t.Fatal("Meets")
	}
}
