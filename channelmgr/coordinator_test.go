package channelmgr

import (
	"errors"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"strings"
	"testing"
	"time"

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

// moveRevisions checks that every DELETE of a channel key in events comes
// with a PUT of the same channel in the same txn (same revision), and
// returns the distinct revisions of those moves.
func moveRevisions(t *testing.T, events []kv.Event, from int64) map[int64]int {
	t.Helper()
	puts := map[int64]map[string]bool{}
	for _, ev := range events {
		if ev.Type == kv.EventPut {
			_, ch, _ := meta.ParseChannelKey(ev.KV.Key)
			if puts[ev.Revision()] == nil {
				puts[ev.Revision()] = map[string]bool{}
			}
			puts[ev.Revision()][ch] = true
		}
	}
	revs := map[int64]int{}
	for _, ev := range events {
		node, ch, err := meta.ParseChannelKey(ev.KV.Key)
		if err != nil || ev.Type != kv.EventDelete || node != from {
			continue
		}
		if !puts[ev.Revision()][ch] {
			t.Fatalf("channel %s deleted from node %d at revision %d without a put in the same txn", ch, from, ev.Revision())
		}
		revs[ev.Revision()]++
	}
	return revs
}

func TestNodeDeathReassigns(t *testing.T) {
	h := newHarness(t)
	ns := h.addNodes(3)
	c := h.lead()
	chs := names("ch", 30)
	h.register(1, chs...)
	h.eventually("all watched", func() bool { return h.allWatched(chs) })
	onDead := h.counts()[ns[0].id]
	if onDead == 0 {
		t.Fatal("node 0 got no channels")
	}
	start := h.rev()
	ns[0].crash()
	h.advance(nodeTTL+step, c)
	h.eventually("all watched on the survivors", func() bool { return h.allWatched(chs, ns[1].id, ns[2].id) })
	revs := moveRevisions(t, h.events(meta.ChannelPrefix, start, h.lastChannelRev()), ns[0].id)
	moved := 0
	for _, n := range revs {
		moved += n
	}
	if moved != onDead || len(revs) != 1 {
		t.Fatalf("%d of %d channels moved, in txns %v; want all in one txn", moved, onDead, revs)
	}
	counts := h.counts()
	if d := counts[ns[1].id] - counts[ns[2].id]; d > 1 || d < -1 {
		t.Fatalf("survivors unbalanced: %v", counts)
	}
}

func TestLastNodeDiesThenNewNodes(t *testing.T) {
	h := newHarness(t)
	n := h.addNode()
	c := h.lead()
	chs := names("ch", 9)
	h.register(1, chs...)
	h.eventually("all watched", func() bool { return h.allWatched(chs, n.id) })
	n.crash()
	h.advance(nodeTTL+step, c)
	h.eventually("all remaining", func() bool {
		as := h.assignments()
		for _, ch := range chs {
			if a, ok := as[ch]; !ok || a.node != 0 {
				return false
			}
		}
		return true
	})
	rem, err := Remaining(h.ctx, h.kv)
	if err != nil || len(rem) != len(chs) {
		t.Fatalf("Remaining = %d channels, %v", len(rem), err)
	}
	// Two nodes join together: the remaining channels spread over both.
	ns := h.addNodes(2)
	h.eventually("all watched on the joiners", func() bool { return h.allWatched(chs, ns[0].id, ns[1].id) })
	counts := h.counts()
	if counts[ns[0].id] < 4 || counts[ns[1].id] < 4 {
		t.Fatalf("remaining channels not spread over the joiners: %v", counts)
	}
}

func (h *harness) assignment(ch string) assignment {
	h.t.Helper()
	return h.assignments()[ch]
}

func TestWatchFailureReleasedThenPlacedElsewhereAfterBackoff(t *testing.T) {
	h := newHarness(t)
	ns := h.addNodes(2)
	c := h.lead()
	for _, n := range ns {
		n.set(func(n *fakeNode) { n.failWatch["x"] = true })
	}
	h.register(1, "x")
	h.eventually("x released after its failure", func() bool {
		a := h.assignment("x")
		return a.info.State == meta.Released && a.info.Attempts == 1 && a.info.FailedNode == a.node
	})
	failed := h.assignment("x").node
	other := ns[0]
	if other.id == failed {
		other = ns[1]
	}
	other.set(func(n *fakeNode) { n.failWatch["x"] = false })
	// Backoff base is 2s: one second later it is still waiting.
	h.advance(step, c)
	if a := h.assignment("x"); a.node != failed || a.info.State != meta.Released {
		t.Fatalf("placed again before the backoff: %+v", a)
	}
	h.advance(2*step, c)
	h.eventually("x watched on the other node", func() bool { return h.allWatched([]string{"x"}, other.id) })
	if a := h.assignment("x"); a.info.Attempts != 1 || a.info.FailedNode != failed || a.info.LastError != "injected failure" {
		t.Fatalf("failure not recorded: %+v", a.info)
	}
}

func TestWatchTimeoutAndProgress(t *testing.T) {
	h := newHarness(t)
	n := h.addNode()
	n.set(func(n *fakeNode) { n.ignoreWat = true })
	c := h.lead()
	h.register(1, "x")
	h.eventually("x ToWatch", func() bool { return h.assignment("x").info.State == meta.ToWatch })
	h.advance(20*time.Second, c)
	n.bumpProgress("x") // re-arms the 30s timeout
	h.eventually("coordinator saw the bump", func() bool {
		return c.lastPass.Load() >= h.clk.Now().UnixNano()
	})
	h.advance(20*time.Second, c)
	if a := h.assignment("x"); a.info.State != meta.ToWatch || a.info.Attempts != 0 {
		t.Fatalf("timed out despite progress: %+v", a.info)
	}
	h.advance(11*time.Second, c)
	h.eventually("x released after the timeout", func() bool {
		a := h.assignment("x")
		return a.info.Attempts == 1 && a.info.FailedNode == n.id && strings.Contains(a.info.LastError, "watch timeout")
	})
	// The only node is the failed one: it gets the channel again after the backoff.
	n.set(func(n *fakeNode) { n.ignoreWat = false })
	h.advance(3*step, c)
	h.eventually("x watched again", func() bool { return h.allWatched([]string{"x"}, n.id) })
}

func TestReleaseTimeoutEvictsAndWaitsOneTTL(t *testing.T) {
	h := newHarness(t)
	a := h.addNode()
	c := h.lead()
	h.register(1, "x")
	h.eventually("x watched on a", func() bool { return h.allWatched([]string{"x"}, a.id) })
	b := h.addNode()
	a.set(func(n *fakeNode) { n.ignoreRel = true })
	a.setStopping() // drain: x must leave a, which never answers
	h.eventually("x ToRelease on a", func() bool { return h.assignment("x").info.State == meta.ToRelease })
	h.advance(29*time.Second, c)
	if _, err := h.kv.TimeToLive(h.ctx, a.lease); err != nil {
		t.Fatalf("a evicted before the release timeout: %v", err)
	}
	// Step until the eviction: a's lease is revoked.
	for i := 0; ; i++ {
		if _, err := h.kv.TimeToLive(h.ctx, a.lease); errors.Is(err, kv.ErrLeaseNotFound) {
			break
		}
		if i == 5 {
			t.Fatalf("a not evicted 5s after the release timeout\n%s", h.dump())
		}
		h.advance(step, c)
	}
	evictedAt := h.clk.Now()
	// Until a's TTL has passed, x stays on a: a may still be running it.
	for h.clk.Since(evictedAt) < nodeTTL-step {
		h.advance(step, c)
		if as := h.assignment("x"); as.node != a.id {
			t.Fatalf("x moved to node %d %v after the eviction, before one TTL", as.node, h.clk.Since(evictedAt))
		}
	}
	h.advance(2*step, c)
	h.eventually("x watched on b", func() bool { return h.allWatched([]string{"x"}, b.id) })
	if got := testutil.ToFloat64(c.m.evictions); got != 1 {
		t.Fatalf("evictions metric = %v", got)
	}
}
