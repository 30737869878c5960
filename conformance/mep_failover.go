package conformance

import (
	"fmt"
	"testing"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
)

// requireMovedAfter checks that every new assignment of chs since revision
// since came after rev (a dead node's channels move only once its session
// is gone): the first ToWatch put of each is at a higher revision.
func (m *mep) requireMovedAfter(chs []string, since, rev int64, why string) {
	m.t.Helper()
	for _, ch := range chs {
		for _, kc := range m.chk.History(ch) {
			if kc.Rev > since && kc.Type == kv.EventPut && kc.Info.State == meta.ToWatch && kc.Info.Progress == 0 && kc.Rev < rev {
				m.fatalf("%s: %s was reassigned at revision %d, before revision %d", why, ch, kc.Rev, rev)
			}
		}
	}
}

func mepNodeCrashFailover(t *testing.T, m *mep) {
	a := m.startNode()
	m.startNode()
	m.startNode()
	m.leaderCoord()
	chs := names("crash", m.size(30, 12))
	m.register(1, chs...)
	m.waitBalanced("the channels to spread")
	m.sync()
	aID := a.ID()
	aChans := m.channelsOn(aID)
	since := m.chk.Rev()
	m.crashNode(a)
	m.waitBalanced("the crashed node's channels to fail over")
	m.sync()
	end := m.chk.SessionEnd(aID)
	if end == 0 {
		m.fatalf("%s's session key is still there after failover", a.name)
	}
	m.requireMovedAfter(aChans, since, end, "failover before the node's lease ended")
	if got := m.movesSince(since, aChans); got != len(aChans) {
		m.fatalf("%d moves for the %d channels of the crashed node, want one each", got, len(aChans))
	}
	if got := m.movesSince(since, subtract(chs, aChans)); got != 0 {
		m.fatalf("failover moved %d channels of live nodes", got)
	}
}

func mepLastNodeToRemaining(t *testing.T, m *mep) {
	a := m.startNode()
	m.leaderCoord()
	chs := names("last", m.size(20, 8))
	m.register(1, chs...)
	m.settle()
	m.crashNode(a)
	m.waitAllRemaining(chs)
	// A channel registered while no node lives waits in remaining too.
	m.register(2, "last-late")
	m.waitAllRemaining(append(chs, "last-late"))
	m.requireStable(m.stableWindow(), "channels wait in remaining")
	if run := m.rec.Running(); len(run) > 0 {
		m.fatalf("channels run with no live node: %v", run)
	}
}

// waitAllRemaining waits until every channel of chs is in channel/remaining/.
func (m *mep) waitAllRemaining(chs []string) {
	m.t.Helper()
	m.waitFor("the channels to wait in remaining", func() string {
		v := m.chk.View()
		for _, ch := range chs {
			a, ok := v.Assign[ch]
			if !ok || a.NodeID != 0 {
				return fmt.Sprintf("%s is not in remaining (%+v)", ch, a)
			}
		}
		return ""
	})
}

func mepRemainingToNewNode(t *testing.T, m *mep) {
	a := m.startNode()
	c1 := m.leaderCoord()
	chs := names("rem", m.size(30, 12))
	m.register(1, chs...)
	m.settle()
	m.crashNode(a)
	m.waitAllRemaining(chs)

	// Three nodes join together while the coordinator runs: the remaining
	// channels end up spread over all of them.
	var joiners []*mepNode
	for range 3 {
		joiners = append(joiners, m.startNode(noWait()))
	}
	for _, n := range joiners {
		m.waitRegistered(n)
	}
	m.waitBalanced("remaining channels to spread over the joiners")
	for _, n := range joiners {
		if len(m.channelsOn(n.ID())) == 0 {
			m.fatalf("joiner %s got no channel: %v", n.name, m.counts())
		}
	}

	// Again with the coordinator down while the nodes join: the next
	// leader places each remaining channel once, spread, with no move.
	for _, n := range joiners {
		m.crashNode(n)
	}
	m.waitAllRemaining(chs)
	m.crashCoord(c1)
	joiners = joiners[:0]
	for range 3 {
		joiners = append(joiners, m.startNode())
	}
	m.sync()
	since := m.chk.Rev()
	m.leaderCoord()
	m.waitBalanced("remaining channels to be placed by the new leader")
	m.sync()
	for _, ch := range chs {
		if got := m.toWatchPuts(ch, since); got != 1 {
			m.fatalf("%s placed %d times by the new leader, want once (spread directly over all joiners)", ch, got)
		}
	}
}

func mepAddThenKillImmediately(t *testing.T, m *mep) {
	m.startNode()
	m.leaderCoord()
	chs := names("akill", m.size(12, 6))
	m.register(1, chs...)
	m.settle()

	// Killed before it could register.
	b := m.startNode(noWait())
	m.crashNode(b)
	m.settle()

	// Killed as soon as its session key appears.
	c := m.startNode(noWait())
	m.waitFor(c.name+"'s session key", func() string {
		if id := c.ID(); id != 0 && m.chk.View().Live[id] != "" {
			return ""
		}
		return "not yet"
	})
	m.crashNode(c)
	m.settle()

	// Killed as soon as the coordinator gave it something.
	d := m.startNode()
	more := names("akill-more", 6)
	m.register(2, more...)
	m.waitFor("a channel to be assigned to "+d.name, func() string {
		if len(m.channelsOn(d.ID())) > 0 {
			return ""
		}
		return "nothing yet"
	})
	m.crashNode(d)
	m.settle()
	for _, ch := range append(chs, more...) {
		if id := m.owners()[ch]; id == b.ID() || id == c.ID() || id == d.ID() {
			m.fatalf("%s still on a killed node", ch)
		}
	}
}

func mepSelfFenceOnSessionLoss(t *testing.T, m *mep) {
	a := m.startNode()
	m.startNode()
	m.leaderCoord()
	chs := names("fence", m.size(20, 8))
	m.register(1, chs...)
	m.waitBalanced("the channels to spread")
	m.sync()
	aID := a.ID()
	aChans := m.channelsOn(aID)
	if len(aChans) == 0 {
		m.fatalf("%s got no channel", a.name)
	}
	// a is cut off: it must stop everything before its lease can expire
	// (the Checker verifies when the session key goes), and before anyone
	// else starts its channels (the Recorder verifies at each Watch).
	m.chk.ExpectFence(aID)
	since := m.chk.Rev()
	a.kv.Partition()
	m.waitFor("the partitioned node to fence and its channels to fail over", func() string {
		if m.chk.SessionEnd(aID) == 0 {
			return "its session key is still there"
		}
		if open := m.rec.OpenOf(a.name, aID); len(open) > 0 {
			return fmt.Sprintf("%s still runs %d channels", a.name, len(open))
		}
		return m.unsettled()
	})
	m.sync()
	// The fence happened before the lease ended: every interval of a ended
	// (on the suite's clock) no later than the session end was observed.
	end := m.chk.SessionEnd(aID)
	for _, iv := range m.rec.Intervals() {
		if iv.Node == a.name && iv.NodeID == aID && iv.Open() {
			m.fatalf("%s still runs %s", a.name, iv.Channel)
		}
	}
	m.requireMovedAfter(aChans, since, end, "a partitioned node's channels")
	a.kv.Heal()
	m.waitFor(a.name+" to register again under a new ID", func() string {
		if id := a.ID(); id == aID || id == 0 || m.chk.View().Live[id] == "" {
			return fmt.Sprintf("ID %d", id)
		}
		return ""
	})
	m.waitBalanced("the healed node to get channels again")
}

func mepNodeRestartNewID(t *testing.T, m *mep) {
	a := m.startNode()
	m.startNode()
	m.leaderCoord()
	chs := names("newid", m.size(20, 8))
	m.register(1, chs...)
	m.waitBalanced("the channels to spread")
	m.sync()
	old := a.ID()
	since := m.chk.Rev()
	m.chk.ExpectFence(old)
	a.kv.Partition()
	m.waitFor("the old ID's session to end", func() string {
		if m.chk.SessionEnd(old) == 0 {
			return "still there"
		}
		return ""
	})
	m.settle()
	a.kv.Heal()
	m.waitFor(a.name+" to come back under a new ID", func() string {
		if id := a.ID(); id == old || id == 0 || m.chk.View().Live[id] == "" {
			return fmt.Sprintf("ID %d", id)
		}
		return ""
	})
	if a.ID() <= old {
		m.fatalf("new ID %d is not above the old %d: IDs must never be reused", a.ID(), old)
	}
	m.waitBalanced("the channels to spread onto the new ID")
	m.sync()
	// No ping-pong: each channel moved at most twice (failover off the old
	// ID, then maybe one balance move onto the new one), and the old ID
	// never got anything back.
	for _, ch := range chs {
		if got := m.toWatchPuts(ch, since); got > 2 {
			m.fatalf("%s was assigned %d times since the partition: ping-pong between old and new ID", ch, got)
		}
	}
	m.requireNoToWatchOn(old, since, chs, "the old node ID")
	if on := m.channelsOn(old); len(on) > 0 {
		m.fatalf("keys still under the old ID %d: %v", old, on)
	}
	m.requireStable(m.stableWindow(), "after the node came back")
}
