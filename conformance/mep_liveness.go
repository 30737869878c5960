package conformance

import (
	"fmt"
	"testing"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
)

// Issue 12 (liveness), kind B: the reason of a failure stays visible on the
// assignment (ToRelease, Released while the backoff runs, the next ToWatch)
// until an attempt succeeds; a successful Watched clears it.
func mepFailureReasonKept(t *testing.T, m *mep) {
	a := m.startNode(withScript(func(h *RecordingHandler) { h.FailWatch("fr0", -1) }))
	m.leaderCoord()
	aID := a.ID()
	m.register(1, "fr0")
	m.waitFor("two failed attempts on "+a.name, func() string {
		if n := m.rec.WatchStarts("fr0", 0); n < 2 {
			return fmt.Sprintf("%d attempts", n)
		}
		return ""
	})
	b := m.startNode()
	m.waitFor("fr0 to be Watched on "+b.name, func() string {
		if as := m.chk.View().Assign["fr0"]; as.NodeID != b.ID() || as.Info.State != meta.Watched {
			return fmt.Sprintf("%v on %d", as.Info.State, as.NodeID)
		}
		return ""
	})
	m.sync()
	failed, released, watched := false, 0, false
	for _, kc := range m.chk.History("fr0") {
		if kc.Type != kv.EventPut {
			continue
		}
		switch {
		case kc.Info.State == meta.WatchFailure && kc.NodeID == aID:
			failed = true
		case kc.Info.State == meta.Watched:
			if kc.Info.LastError != "" {
				m.fatalf("Watched keeps the old failure: %v", kc)
			}
			watched = true
		case failed && !watched && kc.Info.LastError == "":
			m.fatalf("the failure reason was erased before an attempt succeeded: %v", kc)
		}
		if failed && kc.Info.State == meta.Released {
			released++
		}
	}
	if !failed || released == 0 || !watched {
		m.fatalf("fr0's history lacks a failure (%v), a Released after it (%d) or a Watched (%v)", failed, released, watched)
	}
}
