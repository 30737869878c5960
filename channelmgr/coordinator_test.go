package channelmgr

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/chanwatch/chanwatch/kv"
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
	h.expireAndFence(ns[0].id, c)
	h.eventually("all watched on the survivors", func() bool { return h.allWatched(chs, ns[1].id, ns[2].id) })
	revs := moveRevisions(t, h.events(meta.ChannelPrefix, start, h.lastChannelRev()), ns[0].id)
	moved := 0
	for _, n := range revs {
		moved += n
	}
	if moved != onDead || len(revs) != 1 {
		t.Fatalf("%d of %d channels moved, in txns %v; want all in one txn", moved, onDead, revs)
	}
	if n := testutil.ToFloat64(c.m.moves.WithLabelValues("failover")); n != float64(onDead) {
		t.Fatalf("moves_started_total{reason=failover} = %v, want %d", n, onDead)
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
	h.expireAndFence(n.id, c)
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
	if n := testutil.ToFloat64(c.m.moves.WithLabelValues("failover")); n != float64(len(chs)) {
		t.Fatalf("moves_started_total{reason=failover} = %v, want %d (to remaining counts too)", n, len(chs))
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
	bumped := n.bumpProgress("x") // re-arms the 30s timeout
	// The timeout runs from when the coordinator folds the bump: wait for a
	// pass over a view that holds it, before the clock moves. (Waiting for
	// a pass at the current time alone let a loaded machine fold it steps
	// later, moving the timeout past where the test looked for it.)
	h.eventually("coordinator saw the bump", func() bool {
		return c.lastRev.Load() >= bumped && c.lastPass.Load() >= h.clk.Now().UnixNano()
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

func TestBalanceOnJoinMinimalMoves(t *testing.T) {
	h := newHarness(t)
	ns := h.addNodes(2)
	h.lead(WithMaxMovesInFlight(3))
	chs := names("ch", 20)
	h.register(1, chs[:10]...)
	h.register(2, chs[10:]...)
	h.eventually("all watched", func() bool { return h.allWatched(chs) })
	before := h.assignments()
	start := h.rev()
	n3 := h.addNode()
	h.eventually("balanced 7/7/6", func() bool {
		c := h.counts()
		return h.allWatched(chs) && c[n3.id] == 6 && c[ns[0].id] == 7 && c[ns[1].id] == 7
	})
	moved := 0
	for ch, a := range h.assignments() {
		if a.node != before[ch].node {
			moved++
			if a.node != n3.id {
				t.Errorf("%s moved %d -> %d, not to the joiner", ch, before[ch].node, a.node)
			}
		}
	}
	if moved != 6 {
		t.Fatalf("%d channels moved, want the minimum 6", moved)
	}
	// And no channel moved twice: exactly 6 ToWatch puts since the join.
	toWatch := 0
	for _, ev := range h.events(meta.ChannelPrefix, start, h.lastChannelRev()) {
		if ev.Type != kv.EventPut {
			continue
		}
		if info, err := meta.DecodeChannelInfo(ev.KV.Key, ev.KV.Value); err == nil && info.State == meta.ToWatch {
			toWatch++
		}
	}
	if toWatch != 6 {
		t.Fatalf("%d ToWatch puts after the join, want 6", toWatch)
	}
	// Both collections are spread onto the joiner.
	per := map[int64]int{}
	for _, a := range h.assignments() {
		if a.node == n3.id {
			per[a.info.CollectionID]++
		}
	}
	if per[1] != 3 || per[2] != 3 {
		t.Fatalf("joiner's channels by collection: %v, want 3 and 3", per)
	}
}

func TestPauseStopsBalanceNotFailover(t *testing.T) {
	h := newHarness(t)
	ns := h.addNodes(2)
	c := h.lead()
	chs := names("ch", 10)
	h.register(1, chs...)
	h.eventually("all watched", func() bool { return h.allWatched(chs) })
	if err := PauseBalance(h.ctx, h.kv); err != nil {
		t.Fatal(err)
	}
	if p, err := BalancePaused(h.ctx, h.kv); err != nil || !p {
		t.Fatalf("BalancePaused = %v, %v", p, err)
	}
	n3 := h.addNode()
	h.advance(5*step, c)
	if got := h.counts()[n3.id]; got != 0 {
		t.Fatalf("balance moved %d channels to the joiner while paused", got)
	}
	// Failover goes on while paused: node 0 dies, its channels move.
	ns[0].crash()
	h.expireAndFence(ns[0].id, c)
	h.eventually("failover while paused", func() bool { return h.allWatched(chs, ns[1].id, n3.id) })
	if err := ResumeBalance(h.ctx, h.kv); err != nil {
		t.Fatal(err)
	}
	h.eventually("balanced after resume", func() bool {
		cn := h.counts()
		d := cn[ns[1].id] - cn[n3.id]
		return h.allWatched(chs) && d <= 1 && d >= -1
	})
}

func TestDeregister(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(h *harness, n *fakeNode) // leaves channel x in some state
		state meta.State
	}{
		{"watched", func(h *harness, n *fakeNode) {}, meta.Watched},
		{"to-watch", func(h *harness, n *fakeNode) { n.set(func(n *fakeNode) { n.ignoreWat = true }) }, meta.ToWatch},
		{"watch-failure-loop", func(h *harness, n *fakeNode) { n.set(func(n *fakeNode) { n.failWatch["x"] = true }) }, meta.Released},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			n := h.addNode()
			h.lead()
			tc.setup(h, n)
			h.register(1, "x", "y")
			h.eventually("x in "+tc.state.String(), func() bool { return h.assignment("x").info.State == tc.state })
			if err := Deregister(h.ctx, h.kv, "x"); err != nil {
				t.Fatal(err)
			}
			h.eventually("x gone", func() bool { _, ok := h.assignments()["x"]; return !ok })
			if _, _, err := Owner(h.ctx, h.kv, "x"); !errors.Is(err, ErrNotAssigned) {
				t.Fatalf("Owner after deregister: %v", err)
			}
			if a, ok := h.assignments()["y"]; !ok || a.node != n.id {
				t.Fatalf("y lost: %+v", a)
			}
		})
	}
	t.Run("remaining", func(t *testing.T) {
		h := newHarness(t)
		h.lead()
		h.register(1, "x")
		h.eventually("x remaining", func() bool { a, ok := h.assignments()["x"]; return ok && a.node == 0 })
		if err := Deregister(h.ctx, h.kv, "x"); err != nil {
			t.Fatal(err)
		}
		h.eventually("x gone", func() bool { _, ok := h.assignments()["x"]; return !ok })
	})
	t.Run("dead-node", func(t *testing.T) {
		h := newHarness(t)
		n := h.addNode()
		c := h.lead()
		h.register(1, "x")
		h.eventually("x watched", func() bool { return h.allWatched([]string{"x"}) })
		n.crash()
		if err := Deregister(h.ctx, h.kv, "x"); err != nil {
			t.Fatal(err)
		}
		// The node still looks alive until its lease expires: ToRelease,
		// unanswered; then the node is gone and the key is deleted.
		h.eventually("x ToRelease", func() bool { return h.assignment("x").info.State == meta.ToRelease })
		h.expireAndFence(n.id, c)
		h.eventually("x gone", func() bool { _, ok := h.assignments()["x"]; return !ok })
	})
}

func TestRegistryErrors(t *testing.T) {
	h := newHarness(t)
	h.register(1, "x")
	if err := Register(h.ctx, h.kv, meta.ChannelSpec{Name: "x"}); !errors.Is(err, ErrAlreadyRegistered) {
		t.Fatalf("duplicate Register: %v", err)
	}
	if err := Deregister(h.ctx, h.kv, "nope"); !errors.Is(err, ErrNotRegistered) {
		t.Fatalf("Deregister unknown: %v", err)
	}
	if err := Register(h.ctx, h.kv, meta.ChannelSpec{Name: "a/b"}); !errors.Is(err, meta.ErrInvalidChannel) {
		t.Fatalf("bad name: %v", err)
	}
	if _, _, err := Owner(h.ctx, h.kv, "x"); !errors.Is(err, ErrNotAssigned) {
		t.Fatalf("Owner before placement: %v", err)
	}
	if _, err := Channels(h.ctx, h.kv, 0); !errors.Is(err, meta.ErrInvalidNodeID) {
		t.Fatalf("Channels(0): %v", err)
	}
	if err := Deregister(h.ctx, h.kv, "x"); err != nil {
		t.Fatal(err)
	}
	if err := Register(h.ctx, h.kv, meta.ChannelSpec{Name: "x"}); err != nil {
		t.Fatalf("register after deregister: %v", err)
	}
}

func TestNewValidatesOptions(t *testing.T) {
	h := newHarness(t)
	for name, o := range map[string]Option{
		"ttl":      WithSessionTTL(0),
		"node ttl": WithNodeTTL(-1),
		"watch":    WithWatchTimeout(0),
		"release":  WithReleaseTimeout(0),
		"check":    WithCheckInterval(0),
		"policy":   WithPolicy(nil),
		"moves":    WithMaxMovesInFlight(0),
		"backoff":  WithBackoff(time.Second, time.Millisecond),
		"clock":    WithClock(nil),
		"budget":   WithMoveBudget(-1, time.Minute),
		"window":   WithMoveBudget(3, 0),
		"per node": WithNodeMoveLimit(-1),
	} {
		if _, err := New(h.kv, o); !errors.Is(err, ErrInvalidOption) {
			t.Errorf("%s: New = %v, want ErrInvalidOption", name, err)
		}
	}
	if _, err := New(nil); !errors.Is(err, ErrInvalidOption) {
		t.Errorf("nil backend: %v", err)
	}
}

// TestStartupRecovery starts a coordinator on a root left in every state a
// crash can leave behind, and checks the reconcile repairs each one.
func TestStartupRecovery(t *testing.T) {
	h := newHarness(t)
	ns := h.addNodes(3)
	a, b, stuck := ns[0], ns[1], ns[2]
	stuck.set(func(n *fakeNode) { n.ignoreRel = true })
	const dead = 99 // a node that died before the coordinator started
	reg := []string{"r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10"}
	h.register(1, reg...)
	info := func(ch string, s meta.State) meta.ChannelInfo {
		return meta.ChannelInfo{Name: ch, CollectionID: 1, State: s}
	}
	// r1: registered, no assignment.
	h.putInfo(a.id, info("r2", meta.Watched))   // healthy: must stay untouched
	h.putInfo(a.id, info("r3", meta.ToWatch))   // a answers it
	h.putInfo(b.id, info("r4", meta.ToRelease)) // b answers Released: place again
	wf := info("r5", meta.WatchFailure)
	wf.FailedNode, wf.LastError = a.id, "boom"
	h.putInfo(a.id, wf)                                  // release, then place avoiding a
	h.putInfo(dead, info("r6", meta.Watched))            // dead node: move after one TTL
	h.putInfo(dead, info("r7", meta.ToWatch))            // ditto, counted as a failed attempt
	h.putInfo(0, info("r8", meta.ToWatch))               // remaining: place
	h.putInfo(stuck.id, info("r9", meta.ReleaseFailure)) // evict stuck, move after its TTL
	h.putInfo(a.id, info("r10", meta.Watched))           // r10 has two keys:
	h.putInfo(0, info("r10", meta.ToWatch))              // the remaining one goes
	h.putInfo(a.id, info("u1", meta.Watched))            // not registered: release, delete
	h.putInfo(0, info("u2", meta.ToWatch))               // not registered: delete
	h.putInfo(dead, info("u3", meta.Released))           // not registered, dead node: delete after one TTL
	h.eventually("nodes answered", func() bool {
		kvs, _, _ := h.kv.List(h.ctx, meta.ChannelPrefix)
		st := map[string]meta.State{}
		for _, e := range kvs {
			node, ch, _ := meta.ParseChannelKey(e.Key)
			if node != 0 {
				i, _ := meta.DecodeChannelInfo(e.Key, e.Value)
				st[ch] = i.State
			}
		}
		return st["r3"] == meta.Watched && st["r4"] == meta.Released
	})
	r2Rev := func() int64 {
		e, _, err := h.kv.Get(h.ctx, meta.ChannelKey(a.id, "r2"))
		if err != nil {
			t.Fatal(err)
		}
		return e.ModRevision
	}
	before := r2Rev()

	c := h.lead()
	h.eventually("u1, u2 gone; r1, r4, r8 placed", func() bool {
		as := map[string]assignment{}
		kvs, _, _ := h.kv.List(h.ctx, meta.ChannelPrefix)
		for _, e := range kvs {
			node, ch, _ := meta.ParseChannelKey(e.Key)
			i, _ := meta.DecodeChannelInfo(e.Key, e.Value)
			if prev, dup := as[ch]; dup && ch != "r10" {
				t.Errorf("%s has two keys (%d, %d)", ch, prev.node, node)
			}
			as[ch] = assignment{node: node, info: i}
		}
		_, u1 := as["u1"]
		_, u2 := as["u2"]
		return !u1 && !u2 && h.allWatchedIn(as, "r1", "r4", "r8")
	})
	h.eventually("duplicate of r10 removed", func() bool { _, _, err := h.kv.Get(h.ctx, meta.RemainingKey("r10")); return err != nil })
	if as := h.assignments(); as["r6"].node != dead || as["r7"].node != dead {
		t.Fatalf("r6/r7 moved before one node TTL: r6=%d r7=%d", as["r6"].node, as["r7"].node)
	}
	h.advance(3*step, c) // r5's backoff
	h.eventually("r5 watched away from its failed node", func() bool {
		a5 := h.assignment("r5")
		return a5.node != a.id && a5.info.State == meta.Watched
	})
	h.advance(nodeTTL+step, c)
	h.advance(nodeTTL+step, c) // the evicted node's TTL
	h.eventually("everything registered watched on a or b", func() bool { return h.allWatched(reg, a.id, b.id) })
	h.eventually("u3 gone", func() bool { _, ok := h.assignments()["u3"]; return !ok })
	if got := r2Rev(); got != before {
		t.Fatalf("healthy r2 was rewritten (mod revision %d -> %d)", before, got)
	}
	if i := h.assignment("r7").info; i.Attempts != 1 || i.FailedNode != dead {
		t.Fatalf("r7 on a dead node while ToWatch not counted as a failure: %+v", i)
	}
	if _, err := h.kv.TimeToLive(h.ctx, stuck.lease); !errors.Is(err, kv.ErrLeaseNotFound) {
		t.Fatalf("stuck node not evicted: %v", err)
	}
}

// allWatchedIn is allWatched on a given listing.
func (h *harness) allWatchedIn(as map[string]assignment, chs ...string) bool {
	for _, ch := range chs {
		if a, ok := as[ch]; !ok || a.node == 0 || a.info.State != meta.Watched {
			return false
		}
	}
	return true
}

// TestAssignmentsOneRead: Assignments returns every channel's owner and
// state from one List, corrupt values flagged, foreign keys skipped.
func TestAssignmentsOneRead(t *testing.T) {
	h := newHarness(t)
	ns := h.addNodes(2)
	h.lead()
	chs := names("ch", 6)
	h.register(1, chs...)
	h.eventually("all watched", func() bool { return h.allWatched(chs) })
	if _, err := kv.Put(h.ctx, h.kv, meta.ChannelKey(ns[0].id, "broken"), []byte("{")); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(h.ctx, h.kv, meta.ChannelPrefix+"not-a-key", []byte("x")); err != nil {
		t.Fatal(err)
	}
	got, rev, err := Assignments(h.ctx, h.kv)
	if err != nil || rev == 0 {
		t.Fatalf("Assignments: %v (revision %d)", err, rev)
	}
	for _, ch := range chs {
		node, info, err := Owner(h.ctx, h.kv, ch)
		if err != nil {
			t.Fatal(err)
		}
		if a := got[ch]; len(a) != 1 || a[0].Node != node || a[0].Info.State != info.State || a[0].Corrupt {
			t.Fatalf("%s: Assignments says %+v, Owner says node %d %v", ch, a, node, info.State)
		}
	}
	if a := got["broken"]; len(a) != 1 || !a[0].Corrupt || a[0].Node != ns[0].id {
		t.Fatalf("broken: %+v, want one corrupt assignment on node %d", a, ns[0].id)
	}
	if len(got) != len(chs)+1 {
		t.Fatalf("%d channels, want %d", len(got), len(chs)+1)
	}
}
