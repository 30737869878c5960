package conformance

import (
	"fmt"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/channelmgr"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/session"
)

// firstChange returns the first change of ch after revision since that
// matches (zero KeyChange and false if none).
func (m *mep) firstChange(ch string, since int64, match func(KeyChange) bool) (KeyChange, bool) {
	for _, kc := range m.chk.History(ch) {
		if kc.Rev > since && match(kc) {
			return kc, true
		}
	}
	return KeyChange{}, false
}

func isPut(node int64, st meta.State) func(KeyChange) bool {
	return func(kc KeyChange) bool {
		return kc.Type == kv.EventPut && kc.NodeID == node && kc.Info.State == st && (st != meta.ToWatch || kc.Info.Progress == 0)
	}
}

func anyPut(st meta.State) func(KeyChange) bool {
	return func(kc KeyChange) bool { return kc.Type == kv.EventPut && kc.Info.State == st }
}

func mepWatchTimeoutReassign(t *testing.T, m *mep) {
	// a's Watch of wt runs until cancelled and never reports progress; a
	// itself is alive and heartbeats nothing for it (issue 12, kind 2).
	a := m.startNode(withScript(func(h *RecordingHandler) { h.WatchUntilCancel("wt") }))
	m.leaderCoord()
	m.register(1, "wt")
	aID := a.ID()
	m.waitFor("wt to start on "+a.name, func() string {
		if node, _ := m.rec.RunsOn("wt"); node != a.name {
			return fmt.Sprintf("runs on %q", node)
		}
		return ""
	})
	b := m.startNode()
	m.settle()
	if owner := m.owners()["wt"]; owner != b.ID() {
		m.fatalf("wt ended on node %d, want %s (%d)", owner, b.name, b.ID())
	}
	put, _ := m.firstChange("wt", 0, isPut(aID, meta.ToWatch))
	rel, ok := m.firstChange("wt", 0, isPut(aID, meta.ToRelease))
	if !ok {
		m.fatalf("wt was never released from %s: %v", a.name, m.chk.History("wt"))
	}
	if waited := rel.Time.Sub(put.Time); waited < m.tm.watchTimeout-m.tm.tolerance {
		m.fatalf("ToWatch timed out after %v, before the watch timeout %v", waited, m.tm.watchTimeout)
	}
	m.checkTimedOut("wt", aID, put, rel)
	next, _ := m.firstChange("wt", rel.Rev, anyPut(meta.ToWatch))
	if next.NodeID != b.ID() || next.Info.Attempts < 1 || next.Info.FailedNode != aID {
		m.fatalf("re-placement %v: want on %d with Attempts >= 1 and FailedNode %d", next, b.ID(), aID)
	}
}

func mepWatchFailureReassign(t *testing.T, m *mep) {
	a := m.startNode(withScript(func(h *RecordingHandler) { h.FailWatch("", -1) }))
	m.leaderCoord()
	aID := a.ID()
	// Alone, a failing channel is retried on the only node, with backoff.
	m.register(1, "wf0")
	m.waitFor("three attempts on "+a.name, func() string {
		if n := m.rec.WatchStarts("wf0", 0); n < 3 {
			return fmt.Sprintf("%d attempts", n)
		}
		return ""
	})
	var lastFail KeyChange
	attempts := 0
	for _, kc := range m.chk.History("wf0") {
		switch {
		case kc.Type != kv.EventPut:
		case kc.Info.State == meta.WatchFailure:
			lastFail = kc
			if kc.Info.LastError == "" {
				m.fatalf("WatchFailure without LastError: %v", kc)
			}
		case kc.Info.State == meta.ToWatch && kc.Info.Progress == 0 && lastFail.Rev != 0:
			attempts++
			if kc.Info.Attempts != attempts || kc.Info.FailedNode != aID {
				m.fatalf("retry %d of wf0: Attempts %d, FailedNode %d; want %d, %d", attempts, kc.Info.Attempts, kc.Info.FailedNode, attempts, aID)
			}
			if waited, want := kc.Time.Sub(lastFail.Time), m.backoff(kc.Info.Attempts); waited < want-m.tm.tolerance {
				m.fatalf("retry %d of wf0 after %v, want a backoff of at least %v", attempts, waited, want)
			}
		}
	}
	// With another node, failed channels never go straight back.
	b := m.startNode()
	m.waitFor("wf0 to be Watched on "+b.name, func() string {
		if a := m.chk.View().Assign["wf0"]; a.NodeID != b.ID() || a.Info.State != meta.Watched {
			return fmt.Sprintf("%v on %d", a.Info.State, a.NodeID)
		}
		return ""
	})
	more := names("wf", m.size(8, 6))
	m.register(2, more...)
	m.waitFor("every channel to have run on "+b.name, func() string {
		for _, ch := range more {
			if _, ok := m.firstChange(ch, 0, isPut(b.ID(), meta.Watched)); !ok {
				return ch + " has not"
			}
		}
		return ""
	})
	m.sync()
	for _, ch := range append(more, "wf0") {
		for _, kc := range m.chk.History(ch) {
			if kc.Type != kv.EventPut || kc.NodeID != aID || kc.Info.State != meta.WatchFailure || kc.Rev < m.chk.SessionCreated(b.ID()) {
				continue
			}
			if next, ok := m.firstChange(ch, kc.Rev, anyPut(meta.ToWatch)); ok && next.NodeID == aID {
				m.fatalf("%s failed on %s at revision %d and went straight back to it at %d while %s lives", ch, a.name, kc.Rev, next.Rev, b.name)
			}
		}
	}
	// Once a works again, the cluster balances onto it.
	a.h.Clear("")
	m.waitBalanced("the repaired node to take channels")
}

// backoff is the coordinator's configured backoff before attempt n.
func (m *mep) backoff(n int) time.Duration {
	d := m.tm.backoffBase
	for i := 1; i < n && d < m.tm.backoffMax; i++ {
		d *= 2
	}
	return min(d, m.tm.backoffMax)
}

func mepSlowWatchWithProgress(t *testing.T, m *mep) {
	slow := m.tm.watchTimeout * 3 / 2 // well past the timeout, reporting progress
	m.startNode(withScript(func(h *RecordingHandler) { h.SlowWatch("slow", slow, m.tm.progress/2) }))
	m.leaderCoord()
	m.register(1, "slow", "quick-1", "quick-2")
	m.settle()
	hist := m.chk.History("slow")
	progress := 0
	for _, kc := range hist {
		if kc.Type == kv.EventPut && kc.Info.State == meta.ToRelease {
			m.fatalf("a slow Watch that reports progress was timed out: %v", hist)
		}
		if kc.Type == kv.EventPut && kc.Info.State == meta.ToWatch && kc.Info.Progress > 0 {
			progress++
		}
	}
	if progress < 2 {
		m.fatalf("%d progress heartbeats during a %v Watch with a %v interval: %v", progress, slow, m.tm.progress, hist)
	}
	if n := m.rec.WatchStarts("slow", 0); n != 1 {
		m.fatalf("slow watched %d times, want once", n)
	}
	first, _ := m.firstChange("slow", 0, anyPut(meta.ToWatch))
	if got := m.chk.View().Assign["slow"].Info.AssignRevision; got != first.Rev {
		m.fatalf("slow Watched with token %d, want its ToWatch revision %d", got, first.Rev)
	}
}

func mepReleaseTimeout(t *testing.T, m *mep) {
	var unstick func()
	a := m.startNode(withScript(func(h *RecordingHandler) { unstick = h.StickRelease("stuck") }))
	m.leaderCoord()
	m.register(1, "stuck", "rt-1", "rt-2")
	m.settle()
	if err := channelmgr.PauseBalance(m.ctx, m.b); err != nil {
		m.fatalf("PauseBalance: %v", err)
	}
	b := m.startNode()
	aID := a.ID()
	m.sync()
	since := m.chk.Rev()
	if err := session.Drain(m.ctx, m.b, aID); err != nil {
		m.fatalf("Drain: %v", err)
	}
	m.waitFor("the stuck node to be evicted and stuck to run on "+b.name, func() string {
		if m.chk.SessionEnd(aID) == 0 {
			return a.name + " not evicted"
		}
		if node, _ := m.rec.RunsOn("stuck"); node != b.name {
			return fmt.Sprintf("stuck runs on %q", node)
		}
		return ""
	})
	rel, ok := m.firstChange("stuck", since, isPut(aID, meta.ToRelease))
	if !ok {
		m.fatalf("stuck was never marked ToRelease on %s", a.name)
	}
	gone, ok := m.rec.GoneAt(aID)
	if !ok {
		m.fatalf("recorder did not see %s's session end", a.name)
	}
	if waited := gone.Sub(rel.Time); waited < m.tm.releaseTimout-m.tm.tolerance {
		m.fatalf("%s evicted %v after ToRelease, before the release timeout %v", a.name, waited, m.tm.releaseTimout)
	}
	for _, iv := range m.rec.Intervals() {
		if iv.Channel == "stuck" && iv.Node == b.name {
			if early := gone.Add(m.tm.nodeTTL).Sub(iv.Start); early > m.tm.tolerance {
				m.fatalf("stuck started on %s %v before one TTL after the eviction", b.name, early)
			}
		}
	}
	for _, ch := range []string{"rt-1", "rt-2"} {
		if owner := m.owners()[ch]; owner != b.ID() {
			m.fatalf("%s on %d after the drain, want %s", ch, owner, b.name)
		}
	}
	// Once its Release returns, the evicted node comes back under a new ID.
	unstick()
	m.waitFor(a.name+" to come back", func() string {
		if id := a.ID(); id == aID || m.chk.View().Live[id] == "" {
			return fmt.Sprintf("ID %d", id)
		}
		return ""
	})
	if err := channelmgr.ResumeBalance(m.ctx, m.b); err != nil {
		m.fatalf("ResumeBalance: %v", err)
	}
	m.waitBalanced("the cluster to balance again")
}

func mepStaleAckRejected(t *testing.T, m *mep) {
	var unblock func()
	a := m.startNode(withScript(func(h *RecordingHandler) { unblock = h.BlockWatch("stale") }))
	m.leaderCoord()
	m.register(1, "stale")
	aID := a.ID()
	m.waitFor("stale's Watch to start on "+a.name, func() string {
		if m.rec.WatchStarts("stale", 0) == 0 {
			return "not yet"
		}
		return ""
	})
	b := m.startNode()
	// The coordinator gives up on a (watch timeout) and asks for a release;
	// only then does a's Watch return, and its Watched ack must fail.
	m.waitFor("stale to time out on "+a.name, func() string {
		if _, ok := m.firstChange("stale", 0, isPut(aID, meta.ToRelease)); !ok {
			return "no ToRelease yet"
		}
		return ""
	})
	put, _ := m.firstChange("stale", 0, isPut(aID, meta.ToWatch))
	rel, _ := m.firstChange("stale", 0, isPut(aID, meta.ToRelease))
	m.checkTimedOut("stale", aID, put, rel)
	unblock()
	m.settle()
	if owner := m.owners()["stale"]; owner != b.ID() {
		m.fatalf("stale on %d, want %s", owner, b.name)
	}
	if kc, ok := m.firstChange("stale", 0, isPut(aID, meta.Watched)); ok {
		m.fatalf("%s's stale Watched ack was accepted: %v", a.name, kc)
	}
	// The same at the store: an ack that compares an old mod revision
	// fails and writes nothing.
	cur := m.chk.View().Assign["stale"]
	val, err := meta.EncodeChannelInfo(meta.ChannelInfo{Name: "stale", State: meta.Watched, AssignRevision: cur.ModRevision - 1})
	if err != nil {
		m.fatalf("encode: %v", err)
	}
	before := m.storeRev()
	resp, err := m.b.Txn(m.ctx, kv.Txn{
		If:   []kv.Cmp{kv.CmpModRevision(cur.Key, kv.Equal, cur.ModRevision-1)},
		Then: []kv.Op{kv.OpPut(cur.Key, val)},
	})
	if err != nil || resp.Succeeded || m.storeRev() != before {
		m.fatalf("stale compare-and-swap: succeeded=%v err=%v, revision %d -> %d; want a failed compare and no write", resp.Succeeded, err, before, m.storeRev())
	}
}
