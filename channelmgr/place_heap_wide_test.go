package channelmgr

import (
	"slices"
	"testing"

	"pgregory.net/rapid"
)

// A wider search than TestPlaceLeastLoadedMatchesScan: more nodes, nodes at
// exactly the level, IDs in any order (duplicates and 0 included), Avoid IDs
// not offered, many or one collection.
func TestPlaceLeastLoadedMatchesScanWide(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		nNodes := rapid.IntRange(1, 40).Draw(t, "nodes")
		dupIDs := false
		var nodes []NodeLoad
		for i := range nNodes {
			id := int64(i*3 + 1)
			if dupIDs {
				id = int64(rapid.IntRange(0, 6).Draw(t, "id"))
			}
			n := NodeLoad{ID: id}
			held := rapid.IntRange(0, 10).Draw(t, "held")
			for range held {
				n.Channels = append(n.Channels, Channel{Name: "h", CollectionID: int64(rapid.IntRange(0, 8).Draw(t, "hcoll"))})
			}
			nodes = append(nodes, n)
		}
		nColl := rapid.IntRange(1, 10).Draw(t, "ncoll")
		var chs []Channel
		for range rapid.IntRange(1, 120).Draw(t, "channels") {
			c := Channel{Name: "c", CollectionID: int64(rapid.IntRange(0, nColl).Draw(t, "coll"))}
			switch rapid.IntRange(0, 5).Draw(t, "avoid?") {
			case 0:
				c.Avoid = nodes[rapid.IntRange(0, nNodes-1).Draw(t, "avoid")].ID
			case 1:
				c.Avoid = int64(rapid.IntRange(1, 200).Draw(t, "avoidAny"))
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

func TestPlaceLeastLoadedMatchesScanShuffled(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		nNodes := rapid.IntRange(1, 200).Draw(t, "nodes")
		ids := rapid.Permutation(func() []int64 {
			s := make([]int64, nNodes)
			for i := range s {
				s[i] = int64(i)
			}
			return s
		}()).Draw(t, "ids")
		var nodes []NodeLoad
		maxHeld := rapid.IntRange(0, 30).Draw(t, "maxHeld")
		nColl := rapid.IntRange(1, 30).Draw(t, "ncoll")
		for i := range nNodes {
			n := NodeLoad{ID: ids[i]}
			for range rapid.IntRange(0, maxHeld).Draw(t, "held") {
				n.Channels = append(n.Channels, Channel{Name: "h", CollectionID: int64(rapid.IntRange(0, nColl).Draw(t, "hcoll"))})
			}
			nodes = append(nodes, n)
		}
		var chs []Channel
		for range rapid.IntRange(1, 2000).Draw(t, "channels") {
			c := Channel{Name: "c", CollectionID: int64(rapid.IntRange(0, nColl).Draw(t, "coll"))}
			if rapid.IntRange(0, 3).Draw(t, "avoid?") == 0 {
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
