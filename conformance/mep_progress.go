package conformance

import (
	"fmt"
	"strings"
	"testing"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
)

// Progress is the handler's word, not the node's liveness (issue 12, kind
// 2): these scenarios pair with WatchTimeoutReassign (a Watch that never
// reports), SlowWatchWithProgress (one that always does) and
// HandlerNeverReturns (one that hangs and ignores its ctx).

// watchedOn waits until ch is Watched on node n.
func (m *mep) watchedOn(ch string, n *mepNode) {
	m.t.Helper()
	m.waitFor(ch+" to be Watched on "+n.name, func() string {
		if as := m.chk.View().Assign[ch]; as.NodeID != n.ID() || as.Info.State != meta.Watched {
			return fmt.Sprintf("%v on %d", as.Info.State, as.NodeID)
		}
		return ""
	})
}

func (m *mep) waitWatchStart(ch string) {
	m.t.Helper()
	m.waitFor(ch+"'s Watch to start", func() string {
		if m.rec.WatchStarts(ch, 0) == 0 {
			return "not yet"
		}
		return ""
	})
}

// checkTimedOut checks that the coordinator timed out ch's attempt on node
// with the release rel within two watch timeouts of from, the last write
// the node had cause to make (its ToWatch, or its last reported
// progress), and that the node did not give up first at its attempt cap (a
// WatchFailure before rel). Liveness heartbeats keep the key fresh until
// the cap, and fail this.
func (m *mep) checkTimedOut(ch string, node int64, from, rel KeyChange) {
	m.t.Helper()
	if fail, ok := m.firstChange(ch, from.Rev, isPut(node, meta.WatchFailure)); ok && fail.Rev < rel.Rev {
		m.fatalf("%s: WatchFailure %v before the timeout: the node gave up, the coordinator did not time it out", ch, fail)
	}
	if waited := rel.Time.Sub(from.Time); waited > 2*m.tm.watchTimeout {
		m.fatalf("%s timed out %v after %v, want within about the watch timeout %v", ch, waited, from, m.tm.watchTimeout)
	}
}

func progressed(node int64, st meta.State, than int64) func(KeyChange) bool {
	return func(kc KeyChange) bool {
		return kc.Type == kv.EventPut && kc.NodeID == node && kc.Info.State == st && kc.Info.Progress > than
	}
}

// mepWatchProgressOnce: a Watch that reports progress once and then hangs
// (honouring its ctx) gets one heartbeat, which re-arms the watch timeout
// once; then it is timed out and the channel lands on the idle node.
func mepWatchProgressOnce(t *testing.T, m *mep) {
	a := m.startNode(withScript(func(h *RecordingHandler) { h.WatchProgressOnce("once", m.tm.watchTimeout/2) }))
	m.leaderCoord()
	m.register(1, "once")
	m.waitWatchStart("once")
	aID := a.ID()
	b := m.startNode()
	m.watchedOn("once", b)
	put, _ := m.firstChange("once", 0, isPut(aID, meta.ToWatch))
	hb, ok := m.firstChange("once", 0, progressed(aID, meta.ToWatch, put.Info.Progress))
	if !ok {
		m.fatalf("the one progress report never reached the store: %v", m.chk.History("once"))
	}
	if kc, more := m.firstChange("once", hb.Rev, progressed(aID, meta.ToWatch, hb.Info.Progress)); more {
		m.fatalf("a second heartbeat %v after a single report", kc)
	}
	rel, ok := m.firstChange("once", 0, isPut(aID, meta.ToRelease))
	if !ok {
		m.fatalf("once was never timed out on %s: %v", a.name, m.chk.History("once"))
	}
	if rel.Rev < hb.Rev {
		m.fatalf("timed out at revision %d, before its heartbeat at %d", rel.Rev, hb.Rev)
	}
	if waited := rel.Time.Sub(hb.Time); waited < m.tm.watchTimeout-m.tm.tolerance {
		m.fatalf("timed out %v after the heartbeat, before the watch timeout %v: the heartbeat did not re-arm it", waited, m.tm.watchTimeout)
	}
	m.checkTimedOut("once", aID, hb, rel)
	next, _ := m.firstChange("once", rel.Rev, anyPut(meta.ToWatch))
	if next.NodeID != b.ID() || next.Info.FailedNode != aID {
		m.fatalf("re-placement %v: want on %d with FailedNode %d", next, b.ID(), aID)
	}
}

// mepSlowReleaseWithProgress: a Release (a flush) that takes longer than
// the release timeout but reports progress re-arms the timeout through
// Progress bumps on its ToRelease key: the node is not evicted, and the
// channel is Released and then deleted.
func mepSlowReleaseWithProgress(t *testing.T, m *mep) {
	slow := m.tm.releaseTimout * 3 / 2
	a := m.startNode(withScript(func(h *RecordingHandler) { h.SlowRelease("flush", slow, m.tm.progress/2) }))
	m.leaderCoord()
	m.register(1, "flush", "fl-1")
	m.settle()
	aID := a.ID()
	since := m.chk.Rev()
	m.deregister("flush")
	m.waitFor("flush to be released and deleted", func() string {
		if as, ok := m.chk.View().Assign["flush"]; ok {
			return fmt.Sprintf("%v on %d", as.Info.State, as.NodeID)
		}
		return ""
	})
	if end := m.chk.SessionEnd(aID); end != 0 {
		m.fatalf("%s was evicted at revision %d during a Release that reported progress: %v", a.name, end, m.chk.History("flush"))
	}
	rel, ok := m.firstChange("flush", since, isPut(aID, meta.ToRelease))
	if !ok {
		m.fatalf("flush never marked ToRelease: %v", m.chk.History("flush"))
	}
	beats := 0
	for _, kc := range m.chk.History("flush") {
		if kc.Rev > rel.Rev && kc.Type == kv.EventPut && kc.NodeID == aID && kc.Info.State == meta.ToRelease && kc.Info.Progress > rel.Info.Progress {
			beats++
		}
	}
	if beats < 2 {
		m.fatalf("%d progress heartbeats on ToRelease during a %v Release: %v", beats, slow, m.chk.History("flush"))
	}
	done, ok := m.firstChange("flush", rel.Rev, isPut(aID, meta.Released))
	if !ok {
		m.fatalf("flush never Released: %v", m.chk.History("flush"))
	}
	if took := done.Time.Sub(rel.Time); took < m.tm.releaseTimout {
		m.fatalf("Release took %v, not past the release timeout %v: the scenario proves nothing", took, m.tm.releaseTimout)
	}
	m.sync()
	if a.ID() != aID || m.owners()["fl-1"] != aID {
		m.fatalf("%s now ID %d, fl-1 on %d: want the node untouched", a.name, a.ID(), m.owners()["fl-1"])
	}
}

// mepAttemptCap: a Watch that reports progress forever is given up by its
// node at the attempt cap (WithMaxAttempt): its ctx is cancelled, the node
// reports WatchFailure naming the cap, and the channel lands elsewhere.
// The coordinator never timed it out: progress kept it alive until then.
func mepAttemptCap(t *testing.T, m *mep) {
	capAt := 2 * m.tm.watchTimeout
	a := m.startNode(withMaxAttempt(capAt), withScript(func(h *RecordingHandler) {
		h.WatchProgressUntilCancel("busy", m.tm.progress/2)
	}))
	m.leaderCoord()
	m.register(1, "busy")
	m.waitWatchStart("busy")
	aID := a.ID()
	b := m.startNode()
	m.watchedOn("busy", b)
	put, _ := m.firstChange("busy", 0, isPut(aID, meta.ToWatch))
	fail, ok := m.firstChange("busy", 0, isPut(aID, meta.WatchFailure))
	if !ok {
		m.fatalf("no WatchFailure from %s: %v", a.name, m.chk.History("busy"))
	}
	if !strings.Contains(fail.Info.LastError, "attempt cap") {
		m.fatalf("LastError %q: want it to name the attempt cap", fail.Info.LastError)
	}
	if ran := fail.Time.Sub(put.Time); ran < capAt-m.tm.tolerance {
		m.fatalf("given up after %v, before the cap %v", ran, capAt)
	}
	if rel, ok := m.firstChange("busy", 0, isPut(aID, meta.ToRelease)); ok && rel.Rev < fail.Rev {
		m.fatalf("the coordinator timed out a Watch that reported progress: %v", rel)
	}
}
