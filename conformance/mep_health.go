package conformance

import (
	"fmt"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/channelmgr"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
)

// healthCoord starts a coordinator whose quarantine runs in check
// intervals (5 at first, doubling to 40), and waits until it leads.
func (m *mep) healthCoord() *mepCoord {
	m.t.Helper()
	mc := m.startCoord(channelmgr.WithQuarantine(3, 5*m.tm.check, 40*m.tm.check))
	m.waitLeader(mc)
	return mc
}

// toWatchOnNode counts the new attempts (ToWatch puts) written under node
// id's prefix in revisions (since, until], over every registered channel.
func (m *mep) toWatchOnNode(id, since, until int64) int {
	n := 0
	for ch := range m.chk.View().Registered {
		for _, kc := range m.chk.History(ch) {
			if kc.Rev > since && kc.Rev <= until && kc.NodeID == id && kc.Type == kv.EventPut && kc.Info.State == meta.ToWatch && kc.Info.Progress == 0 {
				n++
			}
		}
	}
	return n
}

// healthWindow is how long the health scenarios watch a failing node: long
// enough for about five quarantines (5+10+20+40+40 check intervals).
func (m *mep) healthWindow() time.Duration { return 120 * m.tm.check }

// maxProbeMoves bounds the channels sent to a node that fails every Watch
// in healthWindow: the balancer's first moves onto the empty node (up to
// its moves in flight, 8, and on a loaded real-time store a second round
// before the third failure is seen), then one probe per quarantine (about
// 5). Without quarantine the same window sends over a thousand.
const maxProbeMoves = 2*channelmgr.DefaultMaxMovesInFlight + 6

// mepFailingNodeQuarantined: one node of five fails every Watch. The
// cluster settles with every channel Watched on the four healthy nodes,
// and the failing node gets channels only as probes, one per quarantine.
func mepFailingNodeQuarantined(t *testing.T, m *mep) {
	var good []int64
	for range 4 {
		good = append(good, m.startNode().ID())
	}
	m.healthCoord()
	chs := names("health", m.size(40, 40))
	m.register(1, chs...)
	m.settle()
	since := m.storeRev()
	bad := m.startNode(withScript(func(h *RecordingHandler) { h.FailWatch("", -1) }))
	m.elapse(m.healthWindow())
	until := m.storeRev() // the bound is for the window, not the settle after it
	m.settle()
	if n := m.counts()[bad.ID()]; n != 0 {
		m.fatalf("%d channels Watched on the failing node", n)
	}
	moves := m.toWatchOnNode(bad.ID(), since, until)
	t.Logf("channels sent to the failing node in %v: %d (bound %d)", m.healthWindow(), moves, maxProbeMoves)
	if moves > maxProbeMoves {
		m.fatalf("%d channels sent to a node that fails every Watch, want at most %d", moves, maxProbeMoves)
	}
	q, err := channelmgr.Quarantined(m.ctx, m.b)
	if err != nil {
		m.fatalf("Quarantined: %v", err)
	}
	if got := q[bad.ID()]; got.Node != bad.ID() || got.Reason == "" {
		m.fatalf("the failing node %d is not published as quarantined: %+v", bad.ID(), q)
	}
	for _, id := range good {
		if _, ok := q[id]; ok {
			m.fatalf("healthy node %d published as quarantined: %+v", id, q[id])
		}
	}
}

// mepTwoFailingNodes: two nodes of five fail every Watch, one of them from
// the start (it takes its share of new channels and fails them all).
func mepTwoFailingNodes(t *testing.T, m *mep) {
	fail := withScript(func(h *RecordingHandler) { h.FailWatch("", -1) })
	for range 3 {
		m.startNode()
	}
	early := m.startNode(fail)
	m.healthCoord()
	chs := names("health2", m.size(40, 40))
	m.register(1, chs...)
	m.settle()
	since := m.storeRev()
	late := m.startNode(fail)
	m.elapse(m.healthWindow())
	until := m.storeRev()
	m.settle()
	for _, bad := range []*mepNode{early, late} {
		moves := m.toWatchOnNode(bad.ID(), since, until)
		t.Logf("channels sent to failing node %d in %v: %d (bound %d)", bad.ID(), m.healthWindow(), moves, maxProbeMoves)
		if moves > maxProbeMoves {
			m.fatalf("%d channels sent to failing node %d, want at most %d", moves, bad.ID(), maxProbeMoves)
		}
	}
	c := m.counts()
	if c[early.ID()]+c[late.ID()] != 0 {
		m.fatalf("channels Watched on the failing nodes: %v", c)
	}
}

// mepFailingNodeRecovers: a node fails its first Watches and then works:
// it is quarantined, a probe succeeds, and it takes its share again.
func mepFailingNodeRecovers(t *testing.T, m *mep) {
	for range 4 {
		m.startNode()
	}
	m.healthCoord()
	chs := names("recover", m.size(40, 40))
	m.register(1, chs...)
	m.settle()
	n := m.startNode(withScript(func(h *RecordingHandler) { h.FailWatch("", 6) }))
	m.waitBalanced("the recovered node to take its share")
	if c := m.counts()[n.ID()]; c < len(chs)/5-1 {
		m.fatalf("the recovered node holds %d channels, want about %d", c, len(chs)/5)
	}
	m.waitFor("its quarantine key to go", func() string {
		q, err := channelmgr.Quarantined(m.ctx, m.b)
		if err != nil {
			return err.Error()
		}
		if len(q) != 0 {
			return fmt.Sprintf("still published: %+v", q)
		}
		return ""
	})
}
