package channelmgr

import (
	"testing"

	"github.com/chanwatch/chanwatch/meta"
)

func TestPlaceOnOneNode(t *testing.T) {
	h := newHarness(t)
	n := h.addNode()
	h.lead()
	chs := names("ch", 5)
	h.register(1, chs...)
	h.eventually("all watched on the node", func() bool { return h.allWatched(chs, n.id) })
	for _, ch := range chs {
		node, info, err := Owner(h.ctx, h.kv, ch)
		if err != nil || node != n.id || info.State != meta.Watched || info.AssignRevision == 0 {
			t.Fatalf("Owner(%s) = %d, %+v, %v", ch, node, info, err)
		}
	}
}

func TestSpreadOverSevenNodes(t *testing.T) {
	h := newHarness(t)
	nodes := h.addNodes(7)
	h.lead()
	var all []string
	for coll, n := range []int{100, 90, 60, 30, 20} {
		chs := names("c"+string(rune('a'+coll))+"_", n)
		h.register(int64(coll+1), chs...)
		all = append(all, chs...)
	}
	h.eventually("300 channels watched", func() bool { return h.allWatched(all) })
	counts := h.counts()
	lo, hi := 1<<30, 0
	for _, n := range nodes {
		lo, hi = min(lo, counts[n.id]), max(hi, counts[n.id])
	}
	if hi-lo > 1 {
		t.Fatalf("per-node counts %v differ by %d", counts, hi-lo)
	}
	// Every collection is spread: no node holds more than its share + 2.
	per := map[int64]map[int64]int{}
	for _, a := range h.assignments() {
		if per[a.info.CollectionID] == nil {
			per[a.info.CollectionID] = map[int64]int{}
		}
		per[a.info.CollectionID][a.node]++
	}
	for coll, m := range per {
		clo, chi := 1<<30, 0
		for _, n := range nodes {
			clo, chi = min(clo, m[n.id]), max(chi, m[n.id])
		}
		if chi-clo > 2 {
			t.Errorf("collection %d spread %v differs by %d", coll, m, chi-clo)
		}
	}
}
