package conformance

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/channelmgr"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/session"
)

// stableWindow is how long the suite watches a settled cluster for
// spurious changes.
func (m *mep) stableWindow() time.Duration { return 10 * m.tm.check }

// spreadGap returns max-min of the Watched counts over live nodes.
func spreadGap(c map[int64]int) int {
	lo, hi := -1, 0
	for _, n := range c {
		if lo < 0 || n < lo {
			lo = n
		}
		hi = max(hi, n)
	}
	return hi - max(lo, 0)
}

// waitBalanced waits until the cluster settled with counts within one.
func (m *mep) waitBalanced(what string) {
	m.t.Helper()
	m.waitFor(what, func() string {
		c, why := m.settledCounts()
		if why != "" {
			return why
		}
		if spreadGap(c) > 1 {
			return fmt.Sprintf("counts %v differ by more than one", c)
		}
		return ""
	})
}

// minMoves is the fewest channel moves that bring counts (node -> channels;
// new nodes at 0) within one of each other.
func minMoves(counts map[int64]int) int {
	cs := make([]int, 0, len(counts))
	total := 0
	for _, n := range counts {
		cs = append(cs, n)
		total += n
	}
	if len(cs) == 0 {
		return 0
	}
	sort.Sort(sort.Reverse(sort.IntSlice(cs)))
	q, r := total/len(cs), total%len(cs)
	moves := 0
	for i, n := range cs {
		target := q
		if i < r {
			target = q + 1
		}
		moves += max(0, n-target)
	}
	return moves
}

func mepAssignSingleNode(t *testing.T, m *mep) {
	n := m.startNode()
	m.leaderCoord()
	chs := names("single", m.size(20, 10))
	m.register(1, chs...)
	m.settle()

	id := n.ID()
	v := m.chk.View()
	for _, ch := range chs {
		a := v.Assign[ch]
		if a.NodeID != id {
			m.fatalf("%s on node %d, want %d", ch, a.NodeID, id)
		}
		if got := m.rec.WatchStarts(ch, 0); got != 1 {
			m.fatalf("%s watched %d times, want once", ch, got)
		}
		// The token is the revision of the ToWatch put the node acted on.
		var toWatch int64
		for _, kc := range m.chk.History(ch) {
			if kc.Type == kv.EventPut && kc.Info.State == meta.ToWatch && toWatch == 0 {
				toWatch = kc.Rev
			}
		}
		if a.Info.AssignRevision != toWatch {
			m.fatalf("%s: Watched with token %d, want the ToWatch revision %d", ch, a.Info.AssignRevision, toWatch)
		}
	}
	// The read API agrees with the keys.
	owner, info, err := channelmgr.Owner(m.ctx, m.b, chs[0])
	if err != nil || owner != id || info.State != meta.Watched {
		m.fatalf("Owner(%s) = %d, %v, %v; want %d, Watched", chs[0], owner, info.State, err, id)
	}
	infos, err := channelmgr.Channels(m.ctx, m.b, id)
	if err != nil || len(infos) != len(chs) {
		m.fatalf("Channels(%d) = %d channels, %v; want %d", id, len(infos), err, len(chs))
	}
	m.requireStable(m.stableWindow(), "a settled single node")
}

func mepSpreadEvenly(t *testing.T, m *mep) {
	const nodes, colls, perColl = 7, 10, 30
	for range nodes {
		m.startNode()
	}
	m.leaderCoord()
	// Collection by collection, as Milvus creates a collection's channels.
	coll := make(map[string]int64)
	for c := int64(1); c <= colls; c++ {
		chs := names(fmt.Sprintf("spread-c%d", c), perColl)
		m.register(c, chs...)
		for _, ch := range chs {
			coll[ch] = c
		}
	}
	m.waitBalanced("300 channels spread over 7 nodes")
	counts := m.requireSpread("300 channels over 7 nodes")
	if len(counts) != nodes {
		m.fatalf("%d live nodes, want %d", len(counts), nodes)
	}
	perNode := make(map[int64]map[int64]int) // collection -> node -> n
	for ch, a := range m.chk.View().Assign {
		c := coll[ch]
		if perNode[c] == nil {
			perNode[c] = make(map[int64]int)
			for id := range counts {
				perNode[c][id] = 0
			}
		}
		perNode[c][a.NodeID]++
	}
	// Node counts stay within one at every placement, so a collection
	// placed over several passes can end one further apart; it must still
	// be on every node, within two.
	worst := 0
	for c, byNode := range perNode {
		gap := spreadGap(byNode)
		worst = max(worst, gap)
		if gap > 2 {
			m.fatalf("collection %d is not spread: channels per node %v", c, byNode)
		}
	}
	m.t.Logf("largest per-collection spread gap: %d", worst)
	m.requireStable(m.stableWindow(), "a balanced cluster")
}

func mepNodeJoinRebalance(t *testing.T, m *mep) {
	m.startNode()
	m.leaderCoord()
	chs := names("join", m.size(30, 12))
	m.register(1, chs...)
	m.settle()
	for range 2 {
		m.sync()
		before := m.counts()
		since, seq := m.chk.Rev(), m.rec.Seq()
		n := m.startNode()
		before[n.ID()] = 0
		want := minMoves(before)
		m.waitBalanced(fmt.Sprintf("the channels to spread onto %s", n.name))
		m.sync()
		if got := m.movesSince(since, chs); got != want {
			m.fatalf("%d moves after %s joined, want the minimum %d (counts before %v, after %v); moves:\n%s", got, n.name, want, before, m.counts(), m.moveReport(since, chs))
		}
		if got := m.rec.WatchStarts("", seq); got != want {
			m.fatalf("%d Watch calls after %s joined, want %d", got, n.name, want)
		}
	}
	m.requireStable(m.stableWindow(), "a rebalanced cluster")
}

func mepBalancePaused(t *testing.T, m *mep) {
	a := m.startNode()
	m.leaderCoord()
	chs := names("paused", m.size(20, 8))
	m.register(1, chs...)
	m.settle()
	if err := channelmgr.PauseBalance(m.ctx, m.b); err != nil {
		m.fatalf("PauseBalance: %v", err)
	}
	b := m.startNode()
	m.requireStable(m.stableWindow(), "balancing is paused")
	if c := m.counts(); c[b.ID()] != 0 {
		m.fatalf("paused: %s got %d channels", b.name, c[b.ID()])
	}
	// Placement of new channels goes on while paused.
	more := names("paused-new", 4)
	m.register(2, more...)
	m.settle()
	// So does failover.
	m.startNode()
	aChans := m.channelsOn(a.ID())
	m.crashNode(a)
	m.settle()
	for _, ch := range aChans {
		if id := m.owners()[ch]; id == a.ID() {
			m.fatalf("%s still on crashed %s while balancing is paused", ch, a.name)
		}
	}
	m.sync()
	before := m.counts()
	since := m.chk.Rev()
	if err := channelmgr.ResumeBalance(m.ctx, m.b); err != nil {
		m.fatalf("ResumeBalance: %v", err)
	}
	m.waitBalanced("balancing to resume")
	m.sync()
	if got, want := m.movesSince(since, append(chs, more...)), minMoves(before); got != want {
		m.fatalf("%d moves after resuming, want the minimum %d (counts before %v)", got, want, before)
	}
}

// channelsOn lists the channels assigned to node id.
func (m *mep) channelsOn(id int64) []string {
	var out []string
	for ch, a := range m.chk.View().Assign {
		if a.NodeID == id {
			out = append(out, ch)
		}
	}
	sort.Strings(out)
	return out
}

// requireNoPutOnAfter checks that no ToWatch was put on node id after rev.
func (m *mep) requireNoToWatchOn(id, after int64, chs []string, why string) {
	m.t.Helper()
	for _, ch := range chs {
		for _, kc := range m.chk.History(ch) {
			if kc.Rev > after && kc.NodeID == id && kc.Type == kv.EventPut && kc.Info.State == meta.ToWatch && kc.Info.Progress == 0 {
				m.fatalf("%s: %s put ToWatch on node %d at revision %d (after %d)", why, ch, id, kc.Rev, after)
			}
		}
	}
}

func mepGracefulDrain(t *testing.T, m *mep) {
	a := m.startNode()
	b := m.startNode()
	c := m.startNode()
	m.leaderCoord()
	chs := names("drain", m.size(30, 12))
	m.register(1, chs...)
	m.waitBalanced("the channels to spread")
	m.sync()

	// Node.Stop: the node marks itself stopping, waits to be drained, exits.
	aID := a.ID()
	aChans := m.channelsOn(aID)
	since := m.chk.Rev()
	m.stopNode(a)
	m.settle()
	m.sync()
	if m.chk.SessionEnd(aID) == 0 {
		m.fatalf("%s stopped but its session key is still there", a.name)
	}
	if got := m.channelsOn(aID); len(got) != 0 {
		m.fatalf("drained %s still holds %v", a.name, got)
	}
	if got := m.movesSince(since, aChans); got != len(aChans) {
		m.fatalf("%d moves to drain %d channels, want one each", got, len(aChans))
	}
	if got := m.movesSince(since, subtract(chs, aChans)); got != 0 {
		m.fatalf("draining %s moved %d channels of other nodes", a.name, got)
	}
	m.requireNoToWatchOn(aID, m.chk.StoppingRev(aID), chs, "a stopping node")
	m.requireSpread("after a drain")

	// session.Drain from another process: b is drained but keeps running.
	bID := b.ID()
	if err := session.Drain(m.ctx, m.b, bID); err != nil {
		m.fatalf("session.Drain(%d): %v", bID, err)
	}
	m.waitFor(b.name+" to be drained", func() string {
		if on := m.channelsOn(bID); len(on) > 0 {
			return fmt.Sprintf("%d channels still on %s", len(on), b.name)
		}
		return m.unsettled()
	})
	newer := names("drain-new", 3)
	m.register(2, newer...)
	m.settle()
	m.requireStable(m.stableWindow(), "a drained node stays empty")
	if on := m.channelsOn(bID); len(on) > 0 {
		m.fatalf("drained (stopping) %s was given %v", b.name, on)
	}
	if cnt := len(m.channelsOn(c.ID())); cnt != len(chs)+len(newer) {
		m.fatalf("%s holds %d channels, want all %d", c.name, cnt, len(chs)+len(newer))
	}
	if err := session.Drain(m.ctx, m.b, 1<<40); err == nil {
		m.fatalf("Drain of an unknown node succeeded")
	}
}

func subtract(all, some []string) []string {
	drop := make(map[string]bool, len(some))
	for _, s := range some {
		drop[s] = true
	}
	var out []string
	for _, s := range all {
		if !drop[s] {
			out = append(out, s)
		}
	}
	return out
}

func mepLargeBatch(t *testing.T, m *mep) {
	const n = 2000
	a := m.startNode()
	chs := names("large", n)
	// Registered before any coordinator runs: the first leader places all
	// of them at once, far above the backend's largest txn.
	m.register(1, chs...)
	if err := channelmgr.PauseBalance(m.ctx, m.b); err != nil {
		m.fatalf("PauseBalance: %v", err)
	}
	c1 := m.leaderCoord()
	m.settle()
	b := m.startNode()
	c2 := m.startCoord() // standby

	// a crashes: all 2000 move to b in batches; c1 crashes after three of
	// them (a crash between the sub-txns of one batch), c2 finishes.
	m.sync()
	since := m.chk.Rev()
	c1.kv.crashAfterWrites(3)
	m.crashNode(a)
	m.waitFor("c1 to crash mid-batch", func() string {
		if c1.kv.writesLeft.Load() != 0 {
			return fmt.Sprintf("%d writes before the crash", c1.kv.writesLeft.Load())
		}
		return ""
	})
	m.crashCoord(c1)
	m.waitLeader(c2)
	m.settle()
	m.sync()
	if got := len(m.channelsOn(b.ID())); got != n {
		m.fatalf("%s holds %d channels, want %d", b.name, got, n)
	}
	for _, ch := range chs {
		if got := m.toWatchPuts(ch, since); got != 1 {
			m.fatalf("%s was placed %d times after the crash, want once", ch, got)
		}
	}
}

// moveReport lists, for the channels of chs assigned after revision since,
// the nodes they were put on, in order.
func (m *mep) moveReport(since int64, chs []string) string {
	var b strings.Builder
	for _, ch := range chs {
		var hops []string
		for _, kc := range m.chk.History(ch) {
			if kc.Rev > since && kc.Type == kv.EventPut && (kc.Info.State == meta.ToRelease || (kc.Info.State == meta.ToWatch && kc.Info.Progress == 0)) {
				hops = append(hops, fmt.Sprintf("%v@node%d/rev%d", kc.Info.State, kc.NodeID, kc.Rev))
			}
		}
		if len(hops) > 0 {
			fmt.Fprintf(&b, "\t%s: %s\n", ch, strings.Join(hops, " -> "))
		}
	}
	return b.String()
}
