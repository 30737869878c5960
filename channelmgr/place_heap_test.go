package channelmgr

import (
	"slices"
	"testing"

	"pgregory.net/rapid"
)

// placeLeastLoadedScan is placeLeastLoaded as it was before its heap: a
// scan of every node per channel. It is the reference the heap version
// must match exactly.
func placeLeastLoadedScan(chs []Channel, nodes []NodeLoad) []int64 {
	out := make([]int64, len(chs))
	if len(nodes) == 0 || len(chs) == 0 {
		return out
	}
	cur := make([]int, len(nodes))
	coll := make([]map[int64]int, len(nodes))
	for i, n := range nodes {
		cur[i] = len(n.Channels)
		coll[i] = make(map[int64]int)
		for _, c := range n.Channels {
			coll[i][c.CollectionID]++
		}
	}
	level, extra := waterLevel(cur, len(chs))
	idx := func(i int) int64 { return nodes[i].ID }
	// open reports whether node i may take one more channel without
	// leaving the water-fill.
	open := func(i int) bool { return cur[i] < level || (cur[i] == level && extra > 0) }
	for _, ci := range placeOrder(chs) {
		c := chs[ci]
		best := -1
		better := func(i int) bool {
			if best < 0 {
				return true
			}
			if a, b := coll[i][c.CollectionID], coll[best][c.CollectionID]; a != b {
				return a < b
			}
			if cur[i] != cur[best] {
				return cur[i] < cur[best]
			}
			return idx(i) < idx(best)
		}
		for i := range nodes {
			if open(i) && (c.Avoid == 0 || idx(i) != c.Avoid) && better(i) {
				best = i
			}
		}
		if best < 0 {
			// Only the avoided node has room: go over the level on the
			// least loaded other node rather than straight back.
			for i := range nodes {
				if idx(i) != c.Avoid && (best < 0 || cur[i] < cur[best] || (cur[i] == cur[best] && idx(i) < idx(best))) {
					best = i
				}
			}
		}
		if best < 0 { // the avoided node is the only node
			best = slices.IndexFunc(nodes, func(n NodeLoad) bool { return n.ID == c.Avoid })
		}
		if cur[best] == level && extra > 0 {
			extra--
		}
		cur[best]++
		coll[best][c.CollectionID]++
		out[ci] = idx(best)
	}
	return out
}

// The heap placement answers exactly what the scan did, for any loads,
// collections, avoided nodes and batch sizes.
func TestPlaceLeastLoadedMatchesScan(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		nNodes := rapid.IntRange(1, 12).Draw(t, "nodes")
		var nodes []NodeLoad
		for i := range nNodes {
			n := NodeLoad{ID: int64(i*3 + 1)}
			for j := range rapid.IntRange(0, 6).Draw(t, "held") {
				n.Channels = append(n.Channels, Channel{Name: "h", CollectionID: int64(rapid.IntRange(1, 4).Draw(t, "hcoll")) + int64(j%2)})
			}
			nodes = append(nodes, n)
		}
		var chs []Channel
		for range rapid.IntRange(1, 40).Draw(t, "channels") {
			c := Channel{Name: "c", CollectionID: int64(rapid.IntRange(1, 5).Draw(t, "coll"))}
			if rapid.IntRange(0, 4).Draw(t, "avoid?") == 0 {
				c.Avoid = nodes[rapid.IntRange(0, nNodes-1).Draw(t, "avoid")].ID
			}
			chs = append(chs, c)
		}
		want := placeLeastLoadedScan(chs, nodes)
		got := placeLeastLoaded(chs, nodes)
		if !slices.Equal(got, want) {
			t.Fatalf("heap placement %v, scan placement %v", got, want)
		}
	})
}
