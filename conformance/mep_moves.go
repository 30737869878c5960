package conformance

import (
	"errors"
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

// Planned moves (issue 13): undrain, MayStop, the move budget, and rolling
// restarts that never send a stopping node's channels to another stopping
// node.

// planned is one planned move of a channel seen in the history: from the
// ToRelease put on node from (at rev start) until the channel is Watched
// on another node (at rev end; 0: not yet).
type planned struct {
	ch         string
	from       int64
	start, end int64
}

// plannedMoves returns the moves of chs off node from that began after
// revision since.
func (m *mep) plannedMoves(chs []string, from, since int64) []planned {
	var out []planned
	for _, ch := range chs {
		var cur *planned
		for _, kc := range m.chk.History(ch) {
			if kc.Rev <= since || kc.Type != kv.EventPut || kc.Corrupt {
				continue
			}
			switch {
			case cur == nil && kc.NodeID == from && kc.Info.State == meta.ToRelease:
				cur = &planned{ch: ch, from: from, start: kc.Rev}
			case cur != nil && kc.NodeID != from && kc.Info.State == meta.Watched:
				cur.end = kc.Rev
				out = append(out, *cur)
				cur = nil
			}
		}
		if cur != nil {
			out = append(out, *cur)
		}
	}
	return out
}

// maxConcurrent is the most moves in flight at any one revision.
func maxConcurrent(ms []planned) int {
	type edge struct {
		rev   int64
		delta int
	}
	var es []edge
	for _, mv := range ms {
		es = append(es, edge{mv.start, 1})
		if mv.end != 0 {
			es = append(es, edge{mv.end, -1})
		}
	}
	// At one revision an end comes before a start: a txn that lands one
	// move and starts the next does not hold both.
	sort.Slice(es, func(i, j int) bool {
		if es[i].rev != es[j].rev {
			return es[i].rev < es[j].rev
		}
		return es[i].delta < es[j].delta
	})
	cur, top := 0, 0
	for _, e := range es {
		cur += e.delta
		top = max(top, cur)
	}
	return top
}

// mayStop calls channelmgr.MayStop and checks its verdict.
func (m *mep) mayStop(id int64, want bool, reason string) {
	m.t.Helper()
	m.sync()
	var got channelmgr.StopCheck
	m.idempotent(fmt.Sprintf("MayStop(%d)", id), nil, func() error {
		var err error
		got, err = channelmgr.MayStop(m.ctx, m.b, id)
		return err
	})
	if got.OK != want || !strings.Contains(got.Reason, reason) {
		m.fatalf("MayStop(%d) = %+v; want ok %v with a reason containing %q", id, got, want, reason)
	}
}

// mepMoveBudget: with at most perWindow planned moves per window, a drain
// of a node holding more channels moves exactly perWindow of them, leaves
// the rest running where they are (MayStop says so), and moves the rest
// once the window has passed; failover is not held back by the budget.
func mepMoveBudget(t *testing.T, m *mep) {
	const perWindow = 2
	window := 200 * m.tm.check // 200 s fake, 20 s real: far longer than the checks below
	a := m.startNode()
	b := m.startNode()
	m.startNode()
	m.waitLeader(m.startCoord(channelmgr.WithMoveBudget(perWindow, window)))
	chs := names("budget", 15)
	m.register(1, chs...)
	m.waitBalanced("the channels to spread")
	m.sync()
	onA := m.channelsOn(a.ID())
	if len(onA) <= perWindow {
		m.fatalf("%s holds %d channels, want more than the budget of %d", a.name, len(onA), perWindow)
	}
	since := m.chk.Rev()
	m.mayStop(a.ID(), true, "")
	if err := session.Drain(m.ctx, m.b, a.ID()); err != nil {
		m.fatalf("Drain(%s): %v", a.name, err)
	}
	m.waitFor(fmt.Sprintf("%d of %s's channels to move", perWindow, a.name), func() string {
		done := 0
		for _, mv := range m.plannedMoves(onA, a.ID(), since) {
			if mv.end != 0 {
				done++
			}
		}
		if done < perWindow {
			return fmt.Sprintf("%d moved", done)
		}
		return ""
	})
	m.requireStable(m.stableWindow(), "the move budget is spent")
	if got := len(m.plannedMoves(onA, a.ID(), since)); got != perWindow {
		m.fatalf("%d planned moves off %s within the window, want exactly the budget %d:\n%s", got, a.name, perWindow, m.moveReport(since, onA))
	}
	if left := len(m.channelsOn(a.ID())); left != len(onA)-perWindow {
		m.fatalf("%d channels left on %s, want %d", left, a.name, len(onA)-perWindow)
	}
	// The held channels still run; nothing may stop while they wait.
	m.mayStop(b.ID(), false, "waits to move off stopping node")
	m.mayStop(a.ID(), false, "still holds")

	// Failover is never budgeted: b crashes, its channels move at once.
	onB := m.channelsOn(b.ID())
	m.crashNode(b)
	m.waitFor(b.name+"'s channels to fail over", func() string {
		for _, ch := range onB {
			if a := m.chk.View().Assign[ch]; a.NodeID == b.ID() || a.Info.State != meta.Watched {
				return fmt.Sprintf("%s is %v on node %d", ch, a.Info.State, a.NodeID)
			}
		}
		return ""
	})

	// Once the window has passed, the drain goes on, perWindow at a time.
	m.waitFor(a.name+" to be drained", func() string {
		if on := m.channelsOn(a.ID()); len(on) > 0 {
			return fmt.Sprintf("%d channels still on %s", len(on), a.name)
		}
		return m.unsettled()
	})
	m.sync()
	moves := m.plannedMoves(onA, a.ID(), since)
	sort.Slice(moves, func(i, j int) bool { return moves[i].start < moves[j].start })
	for i := perWindow; i < len(moves); i += perWindow {
		// The (i+1)-th move started a window after the (i+1-perWindow)-th.
		first, next := m.revTime(moves[i-perWindow].ch, moves[i-perWindow].start), m.revTime(moves[i].ch, moves[i].start)
		if next.Sub(first) < window-m.tm.tolerance {
			m.fatalf("planned moves %d and %d started %v apart, within one window (%v) of a budget of %d", i-perWindow+1, i+1, next.Sub(first), window, perWindow)
		}
	}
	m.mayStop(a.ID(), true, "")
}

// revTime is when the Checker saw ch's change at rev.
func (m *mep) revTime(ch string, rev int64) time.Time {
	for _, kc := range m.chk.History(ch) {
		if kc.Rev == rev {
			return kc.Time
		}
	}
	m.fatalf("no change of %s at revision %d", ch, rev)
	return time.Time{}
}

// mepNodeMoveLimit: with at most one planned move in flight per node, a
// node's drain moves its channels one at a time: at no revision are two of
// them between their ToRelease and their Watched elsewhere.
func mepNodeMoveLimit(t *testing.T, m *mep) {
	a := m.startNode()
	m.startNode()
	m.startNode()
	m.waitLeader(m.startCoord(channelmgr.WithNodeMoveLimit(1)))
	chs := names("limit", 12)
	m.register(1, chs...)
	m.waitBalanced("the channels to spread")
	m.sync()
	onA := m.channelsOn(a.ID())
	since := m.chk.Rev()
	m.stopNode(a)
	m.settle()
	m.sync()
	moves := m.plannedMoves(onA, a.ID(), since)
	if len(moves) != len(onA) {
		m.fatalf("%d planned moves off %s, want %d", len(moves), a.name, len(onA))
	}
	if got := maxConcurrent(moves); got != 1 {
		m.fatalf("%d moves off %s in flight at once, want exactly 1 (the node limit):\n%s", got, a.name, m.moveReport(since, onA))
	}
}

// mepUndrain: a node an operator drained is put back to serving with
// Undrain and takes channels again; a node shutting down is not.
func mepUndrain(t *testing.T, m *mep) {
	a := m.startNode()
	b := m.startNode()
	m.leaderCoord()
	chs := names("undrain", 12)
	m.register(1, chs...)
	m.waitBalanced("the channels to spread")
	if err := session.Drain(m.ctx, m.b, a.ID()); err != nil {
		m.fatalf("Drain(%s): %v", a.name, err)
	}
	m.waitFor(a.name+" to be drained", func() string {
		if on := m.channelsOn(a.ID()); len(on) > 0 {
			return fmt.Sprintf("%d channels still on %s", len(on), a.name)
		}
		return m.unsettled()
	})
	m.mayStop(a.ID(), true, "")
	m.mayStop(b.ID(), false, "no other serving node")
	since := m.chk.Rev()
	m.idempotent("Undrain", nil, func() error { return session.Undrain(m.ctx, m.b, a.ID()) })
	m.waitFor(a.name+" to serve again", func() string {
		if st := m.chk.View().Live[a.ID()]; st != meta.NodeServing {
			return fmt.Sprintf("%s is %v", a.name, st)
		}
		return ""
	})
	m.waitBalanced("the channels to spread back onto " + a.name)
	m.sync()
	if got, want := len(m.channelsOn(a.ID())), len(chs)/2; got != want {
		m.fatalf("%s holds %d channels after Undrain, want %d", a.name, got, want)
	}
	if got := m.movesSince(since, chs); got != len(chs)/2 {
		m.fatalf("%d moves after Undrain, want the minimum %d:\n%s", got, len(chs)/2, m.moveReport(since, chs))
	}
	if err := session.Undrain(m.ctx, m.b, 1<<40); !errors.Is(err, session.ErrNodeNotFound) {
		m.fatalf("Undrain(unknown) = %v, want session.ErrNodeNotFound", err)
	}
	// A node that shuts down by itself refuses to be undrained; if an
	// Undrain came first, the node's own stop wins.
	if err := b.n.Stop(m.ctx); err != nil {
		m.fatalf("Stop(%s): %v", b.name, err)
	}
	if err := session.Undrain(m.ctx, m.b, b.ID()); err == nil {
		m.fatalf("Undrain of %s after its own Stop succeeded", b.name)
	} else if !errors.Is(err, session.ErrNodeShuttingDown) && !errors.Is(err, session.ErrNodeNotFound) {
		m.fatalf("Undrain of %s after its own Stop = %v, want ErrNodeShuttingDown (or ErrNodeNotFound once it left)", b.name, err)
	}
	m.settle()
	if on := m.channelsOn(b.ID()); len(on) > 0 {
		m.fatalf("%s stopped but holds %v", b.name, on)
	}
}

// drainTogether marks nodes stopping (an operator's drain) in one txn, so
// that the coordinator never sees one of them stopping and the other still
// serving: each session value is rewritten on its own lease, compared on
// its mod revision.
func (m *mep) drainTogether(ids ...int64) {
	m.t.Helper()
	m.idempotent(fmt.Sprintf("drain %v together", ids), nil, func() error {
		var t kv.Txn
		for _, id := range ids {
			key := meta.NodeSessionKey(id)
			cur, _, err := m.b.Get(m.ctx, key)
			if err != nil {
				return err
			}
			s, err := meta.DecodeNodeSession(key, cur.Value)
			if err != nil {
				return err
			}
			s.State, s.StopReason = meta.NodeStopping, meta.StopDrain
			val, err := meta.EncodeNodeSession(s)
			if err != nil {
				return err
			}
			t.If = append(t.If, kv.CmpModRevision(key, kv.Equal, cur.ModRevision))
			t.Then = append(t.Then, kv.OpPutLease(key, val, cur.Lease))
		}
		resp, err := m.b.Txn(m.ctx, t)
		if err == nil && !resp.Succeeded {
			return fmt.Errorf("%w: a session key changed", kv.ErrUnknownOutcome)
		}
		return err
	})
}

// mepRollingRestart: each node in turn stops gracefully and a new one takes
// its place. A stopping node's channels go only to nodes that are not
// stopping (here a second node is drained at the same moment), and each
// restart moves only the stopping nodes' channels and then the fewest that
// balance the nodes back; MayStop holds until the cluster has settled.
func mepRollingRestart(t *testing.T, m *mep) {
	nodes := []*mepNode{m.startNode(), m.startNode(), m.startNode()}
	m.leaderCoord()
	chs := names("rolling", 12)
	m.register(1, chs...)
	m.waitBalanced("the channels to spread")
	total := 0
	for i := range nodes {
		n := nodes[i]
		m.sync()
		m.mayStop(n.ID(), true, "")
		id := n.ID()
		other := nodes[(i+1)%len(nodes)]
		onBoth := append(m.channelsOn(id), m.channelsOn(other.ID())...)
		since := m.chk.Rev()
		// n and a second node stop at the same moment: neither may
		// receive the other's channels.
		m.drainTogether(id, other.ID())
		m.stopNode(n)
		m.settle()
		m.sync()
		for _, x := range []int64{id, other.ID()} {
			m.requireNoToWatchOn(x, since, chs, "a stopping node")
		}
		moved := m.movesSince(since, chs)
		if moved != len(onBoth) {
			m.fatalf("restart of %s with %s drained: %d moves, want %d (one per channel of the two):\n%s", n.name, other.name, moved, len(onBoth), m.moveReport(since, chs))
		}
		m.idempotent("Undrain", nil, func() error { return session.Undrain(m.ctx, m.b, other.ID()) })
		m.waitBalanced("the channels to spread back onto " + other.name)
		m.sync()
		before := m.counts()
		since = m.chk.Rev()
		nodes[i] = m.startNode()
		before[nodes[i].ID()] = 0
		want := minMoves(before)
		m.waitBalanced("the channels to spread onto " + nodes[i].name)
		m.sync()
		if got := m.movesSince(since, chs); got > want {
			m.fatalf("%d moves after %s joined, want at most the minimum %d (counts before %v):\n%s", got, nodes[i].name, want, before, m.moveReport(since, chs))
		}
		total += moved
	}
	m.t.Logf("rolling restart of %d nodes: %d moves for %d channels", len(nodes), total, len(chs))
}
