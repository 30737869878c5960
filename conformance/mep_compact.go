package conformance

import (
	"fmt"
	"testing"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
)

// compactNow compacts the store at its current revision, once the Checker
// has seen it (so the Checker itself never loses history).
func (m *mep) compactNow() {
	m.t.Helper()
	m.sync()
	rev := m.storeRev()
	if err := m.b.Compact(m.ctx, rev); err != nil {
		m.t.Fatalf("compact at %d: %v", rev, err)
	}
}

func mepWatchCompactedRelist(t *testing.T, m *mep) {
	a := m.startNode()
	m.leaderCoord()
	chs := names("wc", m.size(10, 6))
	m.register(1, chs...)
	m.settle()
	aID := a.ID()

	// a's watch is down while its assignments change, and the history it
	// would resume from is compacted away: it must re-list and reconcile.
	a.kv.WatchesDown()
	newer := names("wc-new", 4)
	m.register(2, newer...)
	m.deregister(chs[0], chs[1])
	// chs[2] is deregistered and its key deleted by hand: for a the key
	// just vanishes, and it must stop the channel.
	vanish := chs[2]
	m.deregister(vanish)
	if _, _, err := kv.Delete(m.ctx, m.b, meta.ChannelKey(aID, vanish)); err != nil {
		m.fatalf("delete: %v", err)
	}
	m.waitFor("the coordinator to write a's new work", func() string {
		v := m.chk.View()
		for _, ch := range newer {
			if v.Assign[ch].NodeID != aID || v.Assign[ch].Info.State != meta.ToWatch {
				return fmt.Sprintf("%s: %+v", ch, v.Assign[ch])
			}
		}
		for _, ch := range chs[:2] {
			if v.Assign[ch].Info.State != meta.ToRelease {
				return fmt.Sprintf("%s: %+v", ch, v.Assign[ch])
			}
		}
		return ""
	})
	m.compactNow()
	a.kv.WatchesUp()
	m.settle()
	if a.kv.compacted.Load() == 0 {
		m.fatalf("%s's watch never saw the compaction: the scenario did not test a re-list", a.name)
	}
	if a.ID() != aID {
		m.fatalf("%s re-registered (%d -> %d) instead of re-listing", a.name, aID, a.ID())
	}
	for _, ch := range newer {
		if m.rec.WatchStarts(ch, 0) != 1 {
			m.fatalf("%s watched %d times, want once", ch, m.rec.WatchStarts(ch, 0))
		}
	}
}

func mepCoordinatorCompactedRelist(t *testing.T, m *mep) {
	a := m.startNode()
	b := m.startNode()
	c1 := m.leaderCoord()
	chs := names("cc", m.size(12, 6))
	m.register(1, chs...)
	m.waitBalanced("the channels to spread")

	// The coordinator's watch is down while channels are registered and
	// deregistered and a node dies; the history is compacted before it
	// comes back.
	c1.kv.WatchesDown()
	newer := names("cc-new", 4)
	m.register(2, newer...)
	m.deregister(chs[0])
	bID := b.ID()
	m.crashNode(b)
	m.waitFor(b.name+"'s session to end", func() string {
		if m.chk.SessionEnd(bID) == 0 {
			return "still there"
		}
		return ""
	})
	m.compactNow()
	c1.kv.WatchesUp()
	m.settle()
	if c1.kv.compacted.Load() == 0 {
		m.fatalf("%s's watch never saw the compaction: the scenario did not test a re-list", c1.name)
	}
	if got, want := len(m.channelsOn(a.ID())), len(chs)-1+len(newer); got != want {
		m.fatalf("%s holds %d channels, want %d", a.name, got, want)
	}
}
