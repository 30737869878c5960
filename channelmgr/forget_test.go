package channelmgr

import "testing"

// forgetIdle is meant to keep no per-channel state for settled channels
// (B5: about 200 B each). A channel this term placed keeps its chanRT
// forever: exec sets pendingRev and nothing ever clears it, so the chanRT
// is never zero again, however long the channel has been Watched.
func TestSettledChannelsPlacedThisTermAreForgotten(t *testing.T) {
	h := newHarness(t)
	n := h.addNode()
	chs := names("ch", 20)
	h.register(1, chs...)
	r := newTestReconciler(t, h)
	if err := r.pass(h.ctx); err != nil { // places them
		t.Fatal(err)
	}
	h.eventually("watched", func() bool { return h.allWatched(chs, n.id) })
	for range 3 {
		if err := r.relist(h.ctx); err != nil {
			t.Fatal(err)
		}
		if err := r.pass(h.ctx); err != nil {
			t.Fatal(err)
		}
	}
	if len(r.chans) != 0 {
		var sample chanRT
		for _, rt := range r.chans {
			sample = *rt
			break
		}
		t.Fatalf("%d chanRTs kept for %d settled channels (one: %+v)", len(r.chans), len(chs), sample)
	}
}
