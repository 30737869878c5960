package conformance

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/chanwatch/chanwatch/channelmgr"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
)

// mepBadValues writes corrupt and foreign keys where the components look,
// then checks that they skip them and keep working.
func mepBadValues(t *testing.T, m *mep) {
	a := m.startNode()
	b := m.startNode()
	m.leaderCoord()
	chs := names("bv", m.size(10, 6))
	m.register(1, chs...)
	m.waitBalanced("the channels to spread")
	aID := a.ID()
	valid := func(name string) []byte {
		v, err := meta.EncodeChannelInfo(meta.ChannelInfo{Name: name, State: meta.ToWatch})
		if err != nil {
			m.t.Fatalf("encode: %v", err)
		}
		return v
	}
	spec, _ := meta.EncodeChannelSpec(meta.ChannelSpec{Name: "nested", CollectionID: 1})
	junk := map[string][]byte{
		meta.ChannelKey(aID, "junk-corrupt"):     []byte("{{{"),
		meta.ChannelKey(aID, "junk-state"):       []byte(`{"v":1,"name":"junk-state","state":"Dancing"}`),
		meta.ChannelKey(aID, "junk-name"):        []byte(`{"v":1,"name":"someone-else","state":"ToWatch"}`),
		meta.ChannelKey(aID, "junk-version"):     []byte(`{"v":9,"name":"junk-version","state":"ToWatch"}`),
		meta.ChannelKey(aID, "junk-empty"):       nil,
		meta.NodePrefix(aID) + "nested/key":      valid("key"),
		"channel/abc/junk-segment":               valid("junk-segment"),
		"channel/-3/junk-negative":               valid("junk-negative"),
		"channel/junk-no-node":                   valid("junk-no-node"),
		meta.RemainingKey("junk-remaining"):      []byte("not json"),
		meta.ChannelKey(deadNodeID, "junk-dead"): []byte{0, 1, 2},
		meta.RegistryKey("junk-registry"):        []byte("garbage"),
		meta.RegistryPrefix + "nested/name":      spec,
		meta.NodeSessionPrefix + "xyz":           []byte("garbage"),
		meta.NodeSessionKey(deadNodeID + 1):      []byte("garbage"),
	}
	revs := make(map[string]int64, len(junk))
	for k, v := range junk {
		rev, err := kv.Put(m.ctx, m.b, k, v)
		if err != nil {
			m.fatalf("put %q: %v", k, err)
		}
		revs[k] = rev
	}
	// A registered channel's key corrupted in place: it must not be lost.
	victim := m.channelsOn(aID)[0]
	if _, err := kv.Put(m.ctx, m.b, meta.ChannelKey(aID, victim), []byte("{corrupt")); err != nil {
		m.fatalf("corrupt %s: %v", victim, err)
	}
	// Every loop keeps going: new channels are placed and run, and a node
	// failure is handled.
	more := names("bv-more", 6)
	m.register(2, more...)
	m.settle()
	m.crashNode(b)
	m.settle()
	if got := len(m.channelsOn(aID)); got != len(chs)+len(more) {
		m.fatalf("%s holds %d channels, want %d", a.name, got, len(chs)+len(more))
	}
	m.sync()
	for k, rev := range revs {
		node, ch, perr := meta.ParseChannelKey(k)
		item, _, err := m.b.Get(m.ctx, k)
		if perr != nil {
			// Not a channel key (foreign), or not an assignment at all:
			// skipped and left alone.
			if err != nil || item.ModRevision != rev {
				m.fatalf("foreign key %q was touched (%v, mod revision %d, written at %d)", k, err, item.ModRevision, rev)
			}
			continue
		}
		// A well-formed assignment key whose value is corrupt names an
		// unregistered channel: the coordinator may repair it, but only
		// safely: a live node's key is released before it goes.
		if err == nil {
			continue
		}
		if node == aID {
			hist := m.chk.History(ch)
			rel, ok := m.firstChange(ch, rev, isPut(aID, meta.ToRelease))
			if !ok {
				m.fatalf("%q on live node %d was deleted without a ToRelease: %v", k, aID, hist)
			}
			if _, ok := m.firstChange(ch, rel.Rev, isPut(aID, meta.Released)); !ok {
				m.fatalf("%q on live node %d was deleted before the node answered Released: %v", k, aID, hist)
			}
		}
	}
	for ch := range m.rec.Running() {
		if strings.HasPrefix(ch, "junk") || ch == "key" || ch == "nested" {
			m.fatalf("a node runs junk channel %q", ch)
		}
	}
	for _, e := range m.rec.Events() {
		if strings.HasPrefix(e.Channel, "junk") && e.Kind == WatchStart {
			m.fatalf("a handler was asked to watch junk: %v", e)
		}
	}
	if a.ID() != aID {
		m.fatalf("%s re-registered (%d -> %d) over junk under its prefix", a.name, aID, a.ID())
	}
}

// mepBadRegistryCalls checks the registry API's errors, and that a
// rejected call changes nothing.
func mepBadRegistryCalls(t *testing.T, m *mep) {
	m.startNode()
	m.leaderCoord()
	m.register(1, "br-1")
	m.settle()
	regKey := meta.RegistryKey("br-1")
	before, _, err := m.b.Get(m.ctx, regKey)
	if err != nil {
		m.fatalf("get %s: %v", regKey, err)
	}
	check := func(what string, err, want error) {
		m.t.Helper()
		if !errors.Is(err, want) {
			m.fatalf("%s: err = %v, want %v", what, err, want)
		}
	}
	check("duplicate Register", channelmgr.Register(m.ctx, m.b, meta.ChannelSpec{Name: "br-1", CollectionID: 99}), channelmgr.ErrAlreadyRegistered)
	if after, _, err := m.b.Get(m.ctx, regKey); err != nil || after.ModRevision != before.ModRevision {
		m.fatalf("a duplicate Register rewrote %s (%d -> %d, %v)", regKey, before.ModRevision, after.ModRevision, err)
	}
	check("Deregister of an unknown channel", channelmgr.Deregister(m.ctx, m.b, "br-unknown"), channelmgr.ErrNotRegistered)
	check("Register of an invalid name", channelmgr.Register(m.ctx, m.b, meta.ChannelSpec{Name: "a/b"}), meta.ErrInvalidChannel)
	check("Register of an empty name", channelmgr.Register(m.ctx, m.b, meta.ChannelSpec{}), meta.ErrInvalidChannel)
	check("Deregister of an invalid name", channelmgr.Deregister(m.ctx, m.b, "a b"), meta.ErrInvalidChannel)
	_, _, err = channelmgr.Owner(m.ctx, m.b, "br-unknown")
	check("Owner of an unknown channel", err, channelmgr.ErrNotAssigned)
	_, err = channelmgr.Channels(m.ctx, m.b, 0)
	check("Channels of node 0", err, meta.ErrInvalidNodeID)
	m.requireStable(m.stableWindow(), "rejected registry calls")
	if n := m.rec.WatchStarts("br-1", 0); n != 1 {
		m.fatalf("br-1 watched %d times after a duplicate Register, want once", n)
	}
	m.deregister("br-1")
	check("second Deregister", channelmgr.Deregister(m.ctx, m.b, "br-1"), channelmgr.ErrNotRegistered)
	m.settle()
}

// mepHandlerPanics: a panicking Watch is a WatchFailure; a panicking
// Release is a ReleaseFailure (the node is evicted). Neither stops a loop.
func mepHandlerPanics(t *testing.T, m *mep) {
	a := m.startNode(withScript(func(h *RecordingHandler) {
		h.PanicWatch("pw")
		h.PanicRelease("pr")
	}))
	m.leaderCoord()
	m.register(1, "pw", "pr", "ok-1", "ok-2")
	aID := a.ID()
	m.waitFor("pw to fail on "+a.name+" and the rest to run", func() string {
		kc, ok := m.firstChange("pw", 0, isPut(aID, meta.WatchFailure))
		if !ok {
			return "pw has not failed"
		}
		if !strings.Contains(kc.Info.LastError, "panic") {
			return fmt.Sprintf("pw's LastError %q does not mention the panic", kc.Info.LastError)
		}
		for _, ch := range []string{"pr", "ok-1", "ok-2"} {
			if as := m.chk.View().Assign[ch]; as.NodeID != aID || as.Info.State != meta.Watched {
				return ch + " not Watched on a"
			}
		}
		return ""
	})
	b := m.startNode()
	m.waitFor("pw to run on "+b.name, func() string {
		if as := m.chk.View().Assign["pw"]; as.NodeID != b.ID() || as.Info.State != meta.Watched {
			return fmt.Sprintf("%+v", as)
		}
		return ""
	})
	m.deregister("pr")
	m.waitFor("pr's panicking Release to be reported and "+a.name+" evicted", func() string {
		if _, ok := m.firstChange("pr", 0, isPut(aID, meta.ReleaseFailure)); !ok {
			return "no ReleaseFailure"
		}
		if m.chk.SessionEnd(aID) == 0 {
			return "not evicted"
		}
		return ""
	})
	m.waitFor(a.name+" to come back", func() string {
		if id := a.ID(); id == aID || m.chk.View().Live[id] == "" {
			return fmt.Sprintf("ID %d", id)
		}
		return ""
	})
	m.settle()
	select {
	case <-a.done:
		m.fatalf("%s's Run returned (%v) after a handler panic", a.name, a.err)
	default:
	}
}

// mepHandlerNeverReturns: a Watch that never returns, never reports
// progress and ignores its ctx blocks nothing else on its node and is timed
// out although the node itself is alive (issue 12, kind 2): the node
// cannot release it (Watch has not returned), so after the release timeout
// it is evicted, and the channel lands on the idle node.
func mepHandlerNeverReturns(t *testing.T, m *mep) {
	var unblock func()
	a := m.startNode(withScript(func(h *RecordingHandler) { unblock = h.BlockWatch("hang") }))
	m.leaderCoord()
	m.register(1, "hang")
	m.waitFor("hang's Watch to start", func() string {
		if m.rec.WatchStarts("hang", 0) == 0 {
			return "not yet"
		}
		return ""
	})
	aID := a.ID()
	others := names("nr", 4)
	m.register(1, others...)
	m.waitFor("the other channels to run beside the hung one", func() string {
		for _, ch := range others {
			if as := m.chk.View().Assign[ch]; as.NodeID != aID || as.Info.State != meta.Watched {
				return ch + " not Watched"
			}
		}
		return ""
	})
	b := m.startNode()
	m.waitFor(a.name+" to be evicted and hang to run on "+b.name, func() string {
		if m.chk.SessionEnd(aID) == 0 {
			return "not evicted"
		}
		if as := m.chk.View().Assign["hang"]; as.NodeID != b.ID() || as.Info.State != meta.Watched {
			return fmt.Sprintf("hang %v on %d", as.Info.State, as.NodeID)
		}
		return ""
	})
	put, _ := m.firstChange("hang", 0, isPut(aID, meta.ToWatch))
	rel, ok := m.firstChange("hang", 0, isPut(aID, meta.ToRelease))
	if !ok {
		m.fatalf("hang was never timed out on %s: %v", a.name, m.chk.History("hang"))
	}
	if waited := rel.Time.Sub(put.Time); waited < m.tm.watchTimeout-m.tm.tolerance {
		m.fatalf("hang timed out after %v, before the watch timeout %v", waited, m.tm.watchTimeout)
	}
	m.checkTimedOut("hang", aID, put, rel)
	for _, kc := range m.chk.History("hang") {
		if kc.Type == kv.EventPut && kc.NodeID == aID && kc.Info.Progress > put.Info.Progress {
			m.fatalf("progress written for a Watch that reported none: %v", kc)
		}
	}
	// The node heals: its next Watch of hang (balance may bring it back)
	// returns at once.
	a.h.Clear("hang")
	unblock()
	m.waitBalanced("the node to come back")
}
