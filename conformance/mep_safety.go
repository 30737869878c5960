package conformance

import (
	"fmt"
	"strconv"
	"testing"

	"github.com/chanwatch/chanwatch/channelmgr"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/session"
)

// The scenarios of this file fence every ownership decision: a lease that
// vanished is not a node that stopped, a node ID is never inherited, a
// corrupt control key never wedges anything, a node's own writes with an
// unknown outcome are resolved, and a Release that failed is not forgotten.
// The Checker and Recorder flag overlap and loss at every step; each
// scenario adds what it specifically expects.

// evictionCluster is node n running ev-1 (whose Release always fails) and
// ev-2, a second node other, balance paused, and the leader.
func (m *mep) evictionCluster() (n, other *mepNode, leader *mepCoord) {
	m.t.Helper()
	n = m.startNode(withScript(func(h *RecordingHandler) { h.FailRelease("ev-1", -1) }))
	leader = m.leaderCoord()
	m.register(1, "ev-1", "ev-2")
	m.settle()
	if err := channelmgr.PauseBalance(m.ctx, m.b); err != nil {
		m.fatalf("PauseBalance: %v", err)
	}
	other = m.startNode()
	// Past the new leader's takeover wait (one node TTL into its term), so
	// that only what the coordinator learns of n can hold its channels back.
	m.elapse(2 * m.tm.nodeTTL)
	return n, other, leader
}

// waitMovedAfterFence waits until ev-2 runs on other, then checks that it
// started there only after n had stopped it (the Recorder flags an overlap
// on its own; this makes the expectation explicit).
func (m *mep) waitMovedAfterFence(n, other *mepNode) {
	m.t.Helper()
	m.waitFor("ev-2 to run on "+other.name, func() string {
		if node, _ := m.rec.RunsOn("ev-2"); node != other.name {
			return fmt.Sprintf("ev-2 runs on %q", node)
		}
		return ""
	})
	var stopped, started HandlerEvent
	for _, e := range m.rec.Events() {
		switch {
		case e.Channel == "ev-2" && e.Node == n.name && e.Kind == ReleaseEnd && e.Err == nil && stopped.Seq == 0:
			stopped = e
		case e.Channel == "ev-2" && e.Node == other.name && e.Kind == WatchStart && started.Seq == 0:
			started = e
		}
	}
	if stopped.Seq == 0 || started.Seq < stopped.Seq {
		m.fatalf("ev-2 started on %s (event #%d) before %s stopped it (event #%d)", other.name, started.Seq, n.name, stopped.Seq)
	}
	m.t.Logf("FIGURE %s: ev-2 stopped on %s, started on %s %.2fxTTL later (overlap 0)", m.t.Name(), n.name, other.name,
		float64(started.Time.Sub(stopped.Time))/float64(m.tm.nodeTTL))
}

// mepEvictionWriteAmbiguous: the eviction write lands but answers an
// unknown outcome, and the evicted node is cut off at that moment, so it
// never sees the mark and runs ev-2 until its own fence deadline.
func mepEvictionWriteAmbiguous(t *testing.T, m *mep) {
	n, other, leader := m.evictionCluster()
	sessKey := meta.NodeSessionKey(n.ID())
	leader.kv.Ambiguous(func(call string, t kv.Txn) bool {
		_, ok := putsKey(t, sessKey)
		return call == "txn" && ok
	}, n.kv.Partition)
	m.deregister("ev-1")
	m.waitMovedAfterFence(n, other)
}

// mepEvictionRevokeAmbiguous: the input: the revoke that follows the
// eviction is applied but answers an unknown outcome, and the node is cut
// off at that moment.
func mepEvictionRevokeAmbiguous(t *testing.T, m *mep) {
	n, other, leader := m.evictionCluster()
	leader.kv.Ambiguous(func(call string, _ kv.Txn) bool { return call == "revoke" }, n.kv.Partition)
	m.deregister("ev-1")
	m.waitMovedAfterFence(n, other)
}

// mepLeaseRevokedByStore: a node cut off from the store loses its lease to a
// revoke nobody in chanwatch sent (an operator, or the store itself after a
// stalled leader resumed): the coordinator must still wait until the node
// has fenced itself.
func mepLeaseRevokedByStore(t *testing.T, m *mep) {
	n, other, _ := m.evictionCluster()
	cur, _, err := m.b.Get(m.ctx, meta.NodeSessionKey(n.ID()))
	if err != nil {
		m.fatalf("read %s's session key: %v", n.name, err)
	}
	// Cut off before ev-1 is deregistered: n must not see that ToRelease,
	// whose failure (scripted) would get n evicted by the coordinator,
	// which is not this scenario (a loaded machine showed the race).
	n.kv.Partition()
	m.deregister("ev-1") // so that only ev-2 is n's to move
	if err := m.b.Revoke(m.ctx, cur.Lease); err != nil {
		m.fatalf("revoke %s's lease: %v", n.name, err)
	}
	m.waitMovedAfterFence(n, other)
}

// nodeIDCounterDamaged: nodes run channels, the coordinator is down, one
// node dies and leaves its Watched keys; the counter is then damaged. A new
// node must not inherit the dead node's ID, and a new coordinator must move
// every channel of the dead node.
func nodeIDCounterDamaged(m *mep, damage func()) {
	m.t.Helper()
	a := m.startNode()
	b := m.startNode()
	c1 := m.leaderCoord()
	chs := names("nid", 8)
	m.register(1, chs...)
	m.settle()
	aID, bID := a.ID(), b.ID()
	if len(m.channelsOn(aID)) == 0 {
		m.fatalf("%s holds nothing", a.name)
	}
	m.crashCoord(c1)
	m.crashNode(a)
	m.waitFor(a.name+"'s session to expire", func() string {
		if _, ok := m.chk.View().Live[aID]; ok {
			return "session key still there"
		}
		return ""
	})
	damage()
	m.sync()
	fresh := m.startNode()
	if id := fresh.ID(); id <= max(aID, bID) {
		m.fatalf("a new node got ID %d, which node %d or %d already used", id, aID, bID)
	}
	m.leaderCoord()
	m.settle()
	for ch, owner := range m.owners() {
		if owner == aID {
			m.fatalf("%s is still on dead node %d", ch, aID)
		}
	}
}

func mepNodeIDCounterLost(t *testing.T, m *mep) {
	nodeIDCounterDamaged(m, func() {
		if _, _, err := kv.Delete(m.ctx, m.b, meta.NodeIDCounterKey); err != nil {
			m.fatalf("delete the counter: %v", err)
		}
	})
}

func mepNodeIDCounterCorrupt(t *testing.T, m *mep) {
	nodeIDCounterDamaged(m, func() {
		if _, err := kv.Put(m.ctx, m.b, meta.NodeIDCounterKey, []byte("not a number")); err != nil {
			m.fatalf("corrupt the counter: %v", err)
		}
	})
}

// validLeader reports "" when the leader key names a coordinator that says
// it leads, on a lease; otherwise why not.
func (m *mep) validLeader() string {
	cur, _, err := m.b.Get(m.ctx, meta.CoordinatorKey)
	if err != nil {
		return fmt.Sprintf("leader key: %v", err)
	}
	v, _, err := session.Leader(m.ctx, m.b)
	if err != nil {
		return fmt.Sprintf("leader: %v", err)
	}
	if cur.Lease == kv.NoLease {
		return "the leader key is on no lease"
	}
	for _, mc := range m.coords {
		if mc.name == v.ID && mc.c.IsLeader() {
			return ""
		}
	}
	return fmt.Sprintf("leader key names %q, which does not lead", v.ID)
}

// corruptLeaderKey: garbage on no lease is written over the leader key.
// Within a bounded time one coordinator leads with a valid key; failover
// of the leader and then of a node goes on.
func corruptLeaderKey(m *mep, cutLeader bool) {
	m.t.Helper()
	a := m.startNode()
	b := m.startNode()
	c1 := m.leaderCoord()
	c2 := m.startCoord()
	chs := names("clk", 6)
	m.register(1, chs...)
	m.settle()
	if cutLeader {
		// The holder cannot repair its key: the standby must clear it.
		c1.kv.Partition()
	}
	if _, err := kv.Put(m.ctx, m.b, meta.CoordinatorKey, []byte("garbage")); err != nil {
		m.fatalf("corrupt the leader key: %v", err)
	}
	m.waitFor("a coordinator to lead with a valid leader key", m.validLeader)
	if cutLeader {
		m.waitLeader(c2)
	} else {
		m.crashCoord(c1)
		m.waitLeader(c2)
	}
	m.crashNode(a)
	m.settle()
	if got := len(m.channelsOn(b.ID())); got != len(chs) {
		m.fatalf("%s holds %d channels after failover, want %d", b.name, got, len(chs))
	}
}

func mepCorruptLeaderKey(t *testing.T, m *mep)       { corruptLeaderKey(m, false) }
func mepCorruptLeaderKeyCutOff(t *testing.T, m *mep) { corruptLeaderKey(m, true) }

// mepCorruptControlFlags: a garbage balance-pause flag and a garbage ID
// counter wedge nothing: nodes register, and failover goes on.
func mepCorruptControlFlags(t *testing.T, m *mep) {
	a := m.startNode()
	m.leaderCoord()
	chs := names("ccf", 4)
	m.register(1, chs...)
	m.settle()
	for _, k := range []string{meta.BalancePausedKey, meta.NodeIDCounterKey} {
		if _, err := kv.Put(m.ctx, m.b, k, []byte("\x00garbage")); err != nil {
			m.fatalf("corrupt %s: %v", k, err)
		}
	}
	b := m.startNode()
	if id := b.ID(); id <= a.ID() {
		m.fatalf("%s got ID %d after the counter was corrupted; %s has %d", b.name, id, a.name, a.ID())
	}
	m.crashNode(a)
	m.settle()
	if got := len(m.channelsOn(b.ID())); got != len(chs) {
		m.fatalf("%s holds %d channels after failover, want %d", b.name, got, len(chs))
	}
}

// nodeWrite matches a node's put of ch's key in state st (with a Progress
// bump when progress is set).
func nodeWrite(node func() int64, ch string, st meta.State, progress bool) func(string, kv.Txn) bool {
	return func(call string, t kv.Txn) bool {
		v, ok := putsKey(t, meta.ChannelKey(node(), ch))
		if call != "txn" || !ok {
			return false
		}
		info, err := meta.DecodeChannelInfo(meta.ChannelKey(node(), ch), v)
		return err == nil && info.State == st && (!progress || info.Progress > 0)
	}
}

// mepNodeWritesAmbiguous: a node's heartbeat, Watched ack and Released ack
// each land but answer an unknown outcome. The node must resolve each by
// reading back: one Watch per assignment with the coordinator's token, no
// Release of a running channel, and no watch event of its own write taken
// for a new assignment.
func mepNodeWritesAmbiguous(t *testing.T, m *mep) {
	a := m.startNode(withScript(func(h *RecordingHandler) { h.SlowWatch("nwa-hb", 3*m.tm.progress, m.tm.progress/2) }))
	a.kv.Ambiguous(nodeWrite(a.ID, "nwa-hb", meta.ToWatch, true), nil)
	a.kv.Ambiguous(nodeWrite(a.ID, "nwa-ack", meta.Watched, false), nil)
	a.kv.Ambiguous(nodeWrite(a.ID, "nwa-rel", meta.Released, false), nil)
	m.leaderCoord()
	m.register(1, "nwa-hb", "nwa-ack", "nwa-rel")
	m.settle()
	m.deregister("nwa-rel")
	m.waitFor("nwa-rel to go", func() string {
		if _, ok := m.chk.View().Assign["nwa-rel"]; ok {
			return "still assigned"
		}
		return ""
	})
	m.settle()
	for _, ch := range []string{"nwa-hb", "nwa-ack", "nwa-rel"} {
		assigned, ok := m.firstChange(ch, 0, isPut(a.ID(), meta.ToWatch))
		if !ok {
			m.fatalf("%s was never assigned to %s", ch, a.name)
		}
		wantReleases := 0
		if ch == "nwa-rel" {
			wantReleases = 1
		}
		var watches, releases int
		for _, e := range m.rec.Events() {
			if e.Channel != ch {
				continue
			}
			switch e.Kind {
			case WatchStart:
				watches++
				if e.Token != assigned.Rev {
					m.fatalf("%s watched with token %d, want the coordinator's %d", ch, e.Token, assigned.Rev)
				}
			case ReleaseStart:
				releases++
			}
		}
		if watches != 1 || releases != wantReleases {
			m.fatalf("%s: %d Watch and %d Release calls, want 1 and %d: %v", ch, watches, releases, wantReleases, m.chk.History(ch))
		}
	}
}

// releaseFailsDuringSelfFence: a node loses its session while running
// sf-1, and its Release fails the first fails times. When sf-1 comes back
// to the node (its only node) under a new ID, Release must succeed before
// Watch is called again (the Recorder flags a Watch after a failed Release).
func releaseFailsDuringSelfFence(m *mep, fails int) {
	m.t.Helper()
	a := m.startNode()
	m.leaderCoord()
	m.register(1, "sf-1", "sf-2")
	m.settle()
	a.h.FailRelease("sf-1", fails)
	oldID := a.ID()
	a.kv.Partition()
	m.waitFor(a.name+" to fence", func() string {
		if node, _ := m.rec.RunsOn("sf-2"); node != "" {
			return "sf-2 still runs"
		}
		return ""
	})
	a.kv.Heal()
	m.waitFor(a.name+" to register again", func() string {
		if id := a.ID(); id == oldID || id == 0 {
			return "ID " + strconv.FormatInt(id, 10)
		}
		return ""
	})
	m.settle()
	if node, _ := m.rec.RunsOn("sf-1"); node != a.name {
		m.fatalf("sf-1 runs on %q, want %s", node, a.name)
	}
}

func mepReleaseFailsDuringSelfFence(t *testing.T, m *mep)      { releaseFailsDuringSelfFence(m, 1) }
func mepReleaseFailsTwiceDuringSelfFence(t *testing.T, m *mep) { releaseFailsDuringSelfFence(m, 2) }
