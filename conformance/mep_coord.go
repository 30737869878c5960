package conformance

import (
	"fmt"
	"testing"

	"github.com/chanwatch/chanwatch/channelmgr"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
)

// deadNodeID is a node ID no process ever holds in a scenario.
const deadNodeID int64 = 1 << 40

// putInfo writes an assignment key directly, as a coordinator or node of
// an earlier incarnation would have left it.
func (m *mep) putInfo(node int64, ch string, st meta.State, token int64) {
	m.t.Helper()
	val, err := meta.EncodeChannelInfo(meta.ChannelInfo{Name: ch, CollectionID: 1, State: st, AssignRevision: token})
	if err != nil {
		m.t.Fatalf("encode %s: %v", ch, err)
	}
	if _, err := kv.Put(m.ctx, m.b, meta.ChannelKey(node, ch), val); err != nil {
		m.t.Fatalf("put %s: %v", ch, err)
	}
}

// waitState waits until ch's key is on node in state st.
func (m *mep) waitState(ch string, node int64, st meta.State) {
	m.t.Helper()
	m.waitFor(fmt.Sprintf("%s to be %v on node %d", ch, st, node), func() string {
		a, ok := m.chk.View().Assign[ch]
		if !ok || a.NodeID != node || a.Info.State != st {
			return fmt.Sprintf("%+v", a)
		}
		return ""
	})
}

func mepCoordinatorRestart(t *testing.T, m *mep) {
	a := m.startNode(withScript(func(h *RecordingHandler) { h.FailWatch("cr-watchfailure", 1) }))
	b := m.startNode()
	c := m.startNode(withScript(func(h *RecordingHandler) { h.FailRelease("cr-releasefailure", 1) }))
	aID, bID, cID := a.ID(), b.ID(), c.ID()

	// Build every persisted state with no coordinator running: the suite
	// writes what a coordinator would have, the nodes answer for real.
	states := []meta.State{meta.ToWatch, meta.Watched, meta.WatchFailure, meta.ToRelease, meta.Released, meta.ReleaseFailure}
	regs := []string{"cr-watched", "cr-watchfailure", "cr-released", "cr-releasefailure", "cr-towatch", "cr-torelease", "cr-remaining", "cr-unplaced"}
	for _, st := range states {
		regs = append(regs, "cr-dead-"+st.String())
	}
	m.register(1, regs...)

	m.putInfo(aID, "cr-watched", meta.ToWatch, 0)
	m.waitState("cr-watched", aID, meta.Watched)
	m.putInfo(aID, "cr-watchfailure", meta.ToWatch, 0)
	m.waitState("cr-watchfailure", aID, meta.WatchFailure)
	m.putInfo(bID, "cr-released", meta.ToWatch, 0)
	m.waitState("cr-released", bID, meta.Watched)
	m.putInfo(bID, "cr-released", meta.ToRelease, 0)
	m.waitState("cr-released", bID, meta.Released)
	m.putInfo(cID, "cr-releasefailure", meta.ToWatch, 0)
	m.waitState("cr-releasefailure", cID, meta.Watched)
	m.putInfo(cID, "cr-releasefailure", meta.ToRelease, 0)
	m.waitState("cr-releasefailure", cID, meta.ReleaseFailure)
	m.putInfo(aID, "cr-orphan", meta.ToWatch, 0) // assignment without registry
	m.waitState("cr-orphan", aID, meta.Watched)
	m.putInfo(bID, "cr-torelease", meta.ToWatch, 0)
	m.waitState("cr-torelease", bID, meta.Watched)
	// ToWatch and ToRelease stay unanswered: the nodes' watches are down.
	a.kv.WatchesDown()
	b.kv.WatchesDown()
	m.putInfo(aID, "cr-towatch", meta.ToWatch, 0)
	m.putInfo(bID, "cr-torelease", meta.ToRelease, 0)
	m.putInfo(0, "cr-remaining", meta.ToWatch, 0)
	for _, st := range states {
		m.putInfo(deadNodeID, "cr-dead-"+st.String(), st, 1)
	}
	m.putInfo(deadNodeID, "cr-dead-orphan", meta.Watched, 1)
	// "cr-unplaced" is registered with no assignment at all.
	m.sync()

	// The evicted node comes back under a new ID at once (it fences as soon
	// as it sees the eviction mark): keep balance from moving channels to
	// it, which is not what this scenario checks.
	if err := channelmgr.PauseBalance(m.ctx, m.b); err != nil {
		m.fatalf("PauseBalance: %v", err)
	}
	c1 := m.leaderCoord()
	a.kv.WatchesUp()
	b.kv.WatchesUp()
	m.settle()
	m.sync()
	// A ReleaseFailure means the node is stuck: it was evicted.
	if m.chk.SessionEnd(cID) == 0 {
		m.fatalf("node %d answered ReleaseFailure and was not evicted", cID)
	}
	if len(m.rec.OpenOf(a.name, 0)) == 0 {
		m.fatalf("%s runs nothing", a.name)
	}
	if _, ok := m.chk.View().Assign["cr-watched"]; !ok || m.owners()["cr-watched"] != aID {
		m.fatalf("cr-watched moved off its live node: %v", m.chk.History("cr-watched"))
	}

	// Restarting from a settled state changes nothing.
	since := m.chk.Rev()
	m.crashCoord(c1)
	m.leaderCoord()
	m.requireStable(m.stableWindow(), "a new leader over a settled cluster")
	m.settle()
	if got := m.movesSince(since, regs); got != 0 {
		m.fatalf("a restart over a settled cluster moved %d channels", got)
	}
}

func mepCoordinatorFailoverFencing(t *testing.T, m *mep) {
	m.startNode()
	m.startNode()
	c1 := m.leaderCoord()
	c2 := m.startCoord()
	chs := names("fencing", m.size(12, 6))
	m.register(1, chs...)
	m.waitBalanced("the channels to spread")
	tok1 := m.chk.TermOf(c1.name)
	if tok1 == 0 {
		m.fatalf("no leadership term seen for %s (terms %s)", c1.name, m.chk.Terms())
	}

	// c1 is cut off with work pending: its session fences, its lease
	// expires, c2 takes over. When c1 is healed, whatever it still sends
	// carries the old guard and fails (the procKV check reports any write
	// that lands outside its leadership).
	c1.kv.Partition()
	more := names("fencing-more", 6)
	m.register(2, more...)
	m.waitLeader(c2)
	c1.kv.Heal()
	m.waitFor(c1.name+" to know it was deposed", func() string {
		if c1.c.IsLeader() {
			return "still says it leads"
		}
		return ""
	})
	m.waitBalanced("the new leader to place the new channels")

	// The deposed leader's guard, used by hand: the write fails and
	// changes nothing.
	before := m.storeRev()
	junk, _ := meta.EncodeChannelInfo(meta.ChannelInfo{Name: chs[0], State: meta.ToWatch})
	resp, err := m.b.Txn(m.ctx, kv.Txn{
		If:   []kv.Cmp{kv.CmpCreateRevision(meta.CoordinatorKey, kv.Equal, tok1)},
		Then: []kv.Op{kv.OpDelete(meta.RegistryKey(chs[0])), kv.OpPut(meta.RemainingKey(chs[0]), junk)},
	})
	if err != nil || resp.Succeeded || m.storeRev() != before {
		m.fatalf("write under the deposed token %d: succeeded=%v err=%v revision %d -> %d", tok1, resp.Succeeded, err, before, m.storeRev())
	}
	m.requireStable(m.stableWindow(), "after the failover")
}

func mepDeregister(t *testing.T, m *mep) {
	a := m.startNode(withScript(func(h *RecordingHandler) {
		h.WatchUntilCancel("dg-towatch")
		h.FailWatch("dg-failure", -1)
	}))
	m.leaderCoord()
	keep := names("dg-keep", m.size(8, 4))
	m.register(1, keep...)
	m.register(1, "dg-watched", "dg-towatch", "dg-failure")
	m.waitFor("the three states", func() string {
		v := m.chk.View()
		if v.Assign["dg-watched"].Info.State != meta.Watched {
			return "dg-watched not Watched"
		}
		if v.Assign["dg-towatch"].Info.State != meta.ToWatch || m.rec.WatchStarts("dg-towatch", 0) == 0 {
			return "dg-towatch not running"
		}
		if _, ok := m.firstChange("dg-failure", 0, anyPut(meta.WatchFailure)); !ok {
			return "dg-failure has not failed"
		}
		return ""
	})
	// Deregistered while Watched, ToWatch and failing: released, deleted.
	m.deregister("dg-watched", "dg-towatch", "dg-failure")
	m.settle()
	hist := m.chk.History("dg-watched")
	if n := len(hist); n < 3 || hist[n-3].Info.State != meta.ToRelease || hist[n-2].Info.State != meta.Released || hist[n-1].Type != kv.EventDelete {
		m.fatalf("dg-watched did not go ToRelease, Released, deleted: %v", hist)
	}

	// Deregistered while a balance move waits in ToRelease.
	aID := a.ID()
	a.kv.WatchesDown()
	b := m.startNode()
	var moving string
	m.waitFor("a balance move to be pending on "+a.name, func() string {
		for _, ch := range keep {
			if as := m.chk.View().Assign[ch]; as.NodeID == aID && as.Info.State == meta.ToRelease {
				moving = ch
				return ""
			}
		}
		return "none yet"
	})
	m.sync()
	since := m.chk.Rev()
	m.deregister(moving)
	a.kv.WatchesUp()
	m.settle()
	if n := m.toWatchPuts(moving, since); n != 0 {
		m.fatalf("%s was placed again after it was deregistered mid-move", moving)
	}

	// Deregistered on a dead node whose lease has not expired yet: deleted,
	// never moved.
	m.sync()
	onA := m.channelsOn(aID)
	if len(onA) == 0 {
		m.fatalf("%s holds no channel", a.name)
	}
	since = m.chk.Rev()
	m.crashNode(a)
	m.deregister(onA[0])
	m.settle()
	if n := m.toWatchPuts(onA[0], since); n != 0 {
		m.fatalf("%s was moved off a dead node after it was deregistered: %v", onA[0], m.chk.History(onA[0]))
	}

	// Deregistered while waiting in remaining.
	m.crashNode(b)
	var rest []string
	for ch := range m.chk.View().Registered {
		rest = append(rest, ch)
	}
	m.waitAllRemaining(rest)
	m.deregister(rest[0])
	m.waitFor(rest[0]+"'s remaining key to go", func() string {
		if _, ok := m.chk.View().Assign[rest[0]]; ok {
			return "still there"
		}
		return ""
	})

	// Registered again: placed anew, with a larger token.
	m.register(1, "dg-watched")
	m.startNode()
	m.settle()
}
