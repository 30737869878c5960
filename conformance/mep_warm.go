package conformance

import (
	"fmt"
	"strings"
	"testing"

	"github.com/chanwatch/chanwatch/channelmgr"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/session"
)

// Warm handoff (issue 13): a balance move onto a node whose handler
// implements nodewatch.Preparer prepares the channel there first; only
// once it is Prepared does the source get ToRelease, and the destination's
// ToWatch comes in the txn that withdraws the request.

// warm is one warm-handoff scenario's cluster: the source a holds two
// channels, the preparing node b joins, and balance moves one of them.
type warm struct {
	a, b  *mepNode
	coord *mepCoord
	chs   []string
	since int64 // the Checker's revision before b joined
	seq   int64 // the Recorder's sequence then
}

// warmStart builds the cluster; script shapes b's Prepare.
func (m *mep) warmStart(name string, script func(h *PreparingHandler)) *warm {
	m.t.Helper()
	w := &warm{a: m.startNode()}
	w.coord = m.leaderCoord()
	w.chs = names(name, 2)
	m.register(1, w.chs...)
	m.settle()
	m.sync()
	if got := m.channelsOn(w.a.ID()); len(got) != len(w.chs) {
		m.fatalf("%s holds %v, want every channel %v", w.a.name, got, w.chs)
	}
	w.since, w.seq = m.chk.Rev(), m.rec.Seq()
	w.b = m.startNode(withPreparer(script))
	return w
}

// mark moves the scenario's reference point to now.
func (m *mep) mark(w *warm) {
	m.sync()
	w.since, w.seq = m.chk.Rev(), m.rec.Seq()
}

// prepareChanges returns ch's prepare key changes after rev.
func (m *mep) prepareChanges(ch string, after int64) []KeyChange {
	var out []KeyChange
	for _, kc := range m.chk.PrepareHistory(ch) {
		if kc.Rev > after {
			out = append(out, kc)
		}
	}
	return out
}

// waitPrepared waits until some channel of w has a prepare key on node id
// that reached state st since w.since, and returns that channel.
func (m *mep) waitPrepareState(w *warm, id int64, st meta.State) string {
	m.t.Helper()
	var got string
	m.waitFor(fmt.Sprintf("a prepare request on node %d to reach %v", id, st), func() string {
		for _, ch := range w.chs {
			for _, kc := range m.prepareChanges(ch, w.since) {
				if kc.Type == kv.EventPut && kc.NodeID == id && !kc.Corrupt && kc.Info.State == st {
					got = ch
					return ""
				}
			}
		}
		return "none yet"
	})
	return got
}

// handlerEvents returns the Recorder's events of ch after seq.
func (m *mep) handlerEvents(ch string, after int64) []HandlerEvent {
	var out []HandlerEvent
	for _, e := range m.rec.Events() {
		if e.Seq > after && e.Channel == ch {
			out = append(out, e)
		}
	}
	return out
}

// firstEvent is the Seq of the first event of process node and kind in
// evs (0: none).
func firstEvent(evs []HandlerEvent, node string, kind HandlerEventKind) int64 {
	for _, e := range evs {
		if e.Node == node && e.Kind == kind {
			return e.Seq
		}
	}
	return 0
}

func countEvents(evs []HandlerEvent, node string, kind HandlerEventKind) int {
	n := 0
	for _, e := range evs {
		if e.Node == node && e.Kind == kind {
			n++
		}
	}
	return n
}

// requireWarmMove checks that ch moved from w.a to w.b warm after w.since:
// b was asked to prepare and answered Prepared before a got ToRelease;
// b's ToWatch landed in the txn that deleted the request; and the handler
// calls ran in that order (b's Prepare returned before a's Release began,
// and b's Watch began after a's Release returned), with no Unprepare.
func (m *mep) requireWarmMove(w *warm, ch string) {
	m.t.Helper()
	m.sync()
	// The answer after since, and the request it answers (which a
	// scenario that retried may have made just before since).
	var reqRev, preparedRev, withdrawnRev int64
	for _, kc := range m.chk.PrepareHistory(ch) {
		switch {
		case kc.Type == kv.EventPut && kc.Info.State == meta.ToPrepare && preparedRev == 0:
			if kc.NodeID != w.b.ID() {
				m.fatalf("%s: prepare request on node %d, want %s's %d", ch, kc.NodeID, w.b.name, w.b.ID())
			}
			reqRev = kc.Rev
		case kc.Type == kv.EventPut && kc.Info.State == meta.Prepared && kc.Rev > w.since && preparedRev == 0:
			preparedRev = kc.Rev
		case kc.Type == kv.EventDelete && preparedRev != 0 && withdrawnRev == 0:
			withdrawnRev = kc.Rev
		}
	}
	if reqRev == 0 || preparedRev == 0 || withdrawnRev == 0 {
		m.fatalf("%s: prepare history %v: want ToPrepare, Prepared, then the delete", ch, m.chk.PrepareHistory(ch))
	}
	var releaseRev, watchRev int64
	for _, kc := range m.chk.History(ch) {
		switch {
		case kc.Rev <= w.since || kc.Type != kv.EventPut:
		case kc.NodeID == w.a.ID() && kc.Info.State == meta.ToRelease && releaseRev == 0:
			releaseRev = kc.Rev
		case kc.NodeID == w.b.ID() && kc.Info.State == meta.ToWatch && kc.Info.Progress == 0 && watchRev == 0:
			watchRev = kc.Rev
		}
	}
	if releaseRev <= preparedRev {
		m.fatalf("%s: ToRelease on the source at revision %d, want after Prepared (%d):\n%s", ch, releaseRev, preparedRev, m.moveReport(w.since, w.chs))
	}
	if watchRev != withdrawnRev {
		m.fatalf("%s: ToWatch on %s at revision %d, the request withdrawn at %d: want one txn", ch, w.b.name, watchRev, withdrawnRev)
	}
	// Handler calls: the successful Prepare on b that its Watch took over,
	// the source's Release between the two, and no Unprepare since.
	evs := m.handlerEvents(ch, w.seq)
	watchStart := firstEvent(evs, w.b.name, WatchStart)
	var prepEnd, relStart, relEnd int64
	for _, e := range evs {
		switch {
		case watchStart != 0 && e.Seq > watchStart:
		case e.Node == w.b.name && e.Kind == PrepareEnd && e.Err == nil:
			prepEnd = e.Seq
		case e.Node == w.a.name && e.Kind == ReleaseStart && relStart == 0:
			relStart = e.Seq
		case e.Node == w.a.name && e.Kind == ReleaseEnd && relEnd == 0:
			relEnd = e.Seq
		}
	}
	if watchStart == 0 || prepEnd == 0 || relStart < prepEnd || relEnd == 0 || watchStart < relEnd {
		m.fatalf("%s: handler calls out of order (want Prepare on %s, then Release on %s, then Watch on %s):\n%s",
			ch, w.b.name, w.a.name, w.b.name, eventList(evs))
	}
	for _, e := range evs {
		if e.Seq > prepEnd && e.Node == w.b.name && e.Kind == UnprepareEnd {
			m.fatalf("%s: Unprepare on %s, whose Watch took the preparation over:\n%s", ch, w.b.name, eventList(evs))
		}
	}
}

func eventList(evs []HandlerEvent) string {
	var b strings.Builder
	for _, e := range evs {
		b.WriteString("\t" + e.String() + "\n")
	}
	return b.String()
}

// requireStayed checks that no channel of w left w.a after w.since: no
// ToRelease on it, no Release called, no Watch on w.b.
func (m *mep) requireStayed(w *warm) {
	m.t.Helper()
	m.sync()
	for _, ch := range w.chs {
		for _, kc := range m.chk.History(ch) {
			if kc.Rev > w.since && kc.Type == kv.EventPut && kc.Info.State == meta.ToRelease {
				m.fatalf("%s: ToRelease on node %d at revision %d, want the channel left where it runs:\n%s", ch, kc.NodeID, kc.Rev, m.moveReport(w.since, w.chs))
			}
		}
		evs := m.handlerEvents(ch, w.seq)
		if countEvents(evs, w.a.name, ReleaseStart) != 0 || countEvents(evs, w.b.name, WatchStart) != 0 {
			m.fatalf("%s moved although its preparation did not succeed:\n%s", ch, eventList(evs))
		}
		if a := m.chk.View().Assign[ch]; a.NodeID != w.a.ID() || a.Info.State != meta.Watched {
			m.fatalf("%s is %v on node %d, want Watched on %s", ch, a.Info.State, a.NodeID, w.a.name)
		}
	}
}

// requireNoPrepareKeys checks that no prepare key is left.
func (m *mep) requireNoPrepareKeys() {
	m.t.Helper()
	m.sync()
	items, _, err := m.b.List(m.ctx, meta.PreparePrefix)
	if err != nil {
		m.fatalf("list %s: %v", meta.PreparePrefix, err)
	}
	if len(items) > 0 {
		m.fatalf("prepare keys left: %v", keysOf(items))
	}
}

// mepPrepareSucceeds: a node that can prepare joins; the balance move onto
// it is warm, and nothing else changes.
func mepPrepareSucceeds(t *testing.T, m *mep) {
	w := m.warmStart("warm", nil)
	m.waitBalanced("the channels to spread onto " + w.b.name)
	onB := m.channelsOn(w.b.ID())
	if len(onB) != 1 {
		m.fatalf("%s holds %v, want one channel", w.b.name, onB)
	}
	m.requireWarmMove(w, onB[0])
	if got := m.movesSince(w.since, w.chs); got != 1 {
		m.fatalf("%d moves, want 1:\n%s", got, m.moveReport(w.since, w.chs))
	}
	m.requireNoPrepareKeys()
}

// mepPrepareFails: a destination whose Prepare fails answers
// PrepareFailure; the request is withdrawn (Unprepare runs) and the
// channel stays where it runs. Once Prepare works, the move completes warm.
func mepPrepareFails(t *testing.T, m *mep) {
	w := m.warmStart("warmfail", func(h *PreparingHandler) { h.FailPrepare("", -1) })
	ch := m.waitPrepareState(w, w.b.ID(), meta.PrepareFailure)
	m.waitFor("the failed request to be withdrawn", func() string {
		if pks := m.chk.View().Prepare[ch]; len(pks) > 0 {
			return fmt.Sprintf("%s still has %s (%v)", ch, pks[0].Key, pks[0].Info.State)
		}
		if countEvents(m.handlerEvents(ch, w.seq), w.b.name, UnprepareEnd) == 0 {
			return "no Unprepare yet"
		}
		return ""
	})
	for _, kc := range m.prepareChanges(ch, w.since) {
		if kc.Info.State == meta.PrepareFailure && !strings.Contains(kc.Info.LastError, ErrInjected.Error()) {
			m.fatalf("PrepareFailure of %s has LastError %q, want the handler's error", ch, kc.Info.LastError)
		}
	}
	m.requireStayed(w)
	m.mark(w)
	w.b.h.Clear("")
	m.waitBalanced("the channels to spread onto " + w.b.name + " once Prepare works")
	onB := m.channelsOn(w.b.ID())
	if len(onB) != 1 {
		m.fatalf("%s holds %v, want one channel", w.b.name, onB)
	}
	m.requireWarmMove(w, onB[0])
	m.requireNoPrepareKeys()
}

// mepPrepareTimesOut: a Prepare that neither answers nor reports progress
// is withdrawn one watch timeout after the request (its ctx is cancelled,
// Unprepare runs), and the channel stays where it runs.
func mepPrepareTimesOut(t *testing.T, m *mep) {
	w := m.warmStart("warmslow", func(h *PreparingHandler) { h.PrepareUntilCancel("", 0) })
	ch := m.waitPrepareState(w, w.b.ID(), meta.ToPrepare)
	m.waitFor("the stuck request to be withdrawn", func() string {
		if countEvents(m.handlerEvents(ch, w.seq), w.b.name, UnprepareEnd) == 0 {
			return "no Unprepare yet"
		}
		return ""
	})
	m.sync()
	var put, del KeyChange
	for _, kc := range m.prepareChanges(ch, w.since) {
		if kc.Type == kv.EventPut && put.Rev == 0 {
			put = kc
		}
		if kc.Type == kv.EventDelete && put.Rev != 0 && del.Rev == 0 {
			del = kc
		}
	}
	if del.Rev == 0 {
		m.fatalf("%s: no withdrawal in %v", ch, m.prepareChanges(ch, w.since))
	}
	if waited := del.Time.Sub(put.Time); waited < m.tm.watchTimeout-m.tm.tolerance {
		m.fatalf("%s: request withdrawn %v after it was made, want the watch timeout %v", ch, waited, m.tm.watchTimeout)
	}
	evs := m.handlerEvents(ch, w.seq)
	if end := firstEvent(evs, w.b.name, PrepareEnd); end == 0 || end > firstEvent(evs, w.b.name, UnprepareEnd) {
		m.fatalf("%s: want Prepare to return (cancelled) before Unprepare:\n%s", ch, eventList(evs))
	}
	m.requireStayed(w)
	w.b.h.Clear("")
	m.mark(w)
	m.waitBalanced("the channels to spread onto " + w.b.name + " once Prepare works")
	m.requireNoPrepareKeys()
}

// mepDestinationDiesWhilePreparing: the destination crashes while it
// prepares. The request is withdrawn once its session is gone, with no
// wait for a fence (a preparation owns nothing), and the channel never
// left its node.
func mepDestinationDiesWhilePreparing(t *testing.T, m *mep) {
	w := m.warmStart("warmdie", func(h *PreparingHandler) { h.PrepareUntilCancel("", 0) })
	ch := m.waitPrepareState(w, w.b.ID(), meta.ToPrepare)
	m.waitFor(w.b.name+" to call Prepare", func() string {
		if firstEvent(m.handlerEvents(ch, w.seq), w.b.name, PrepareStart) == 0 {
			return "not yet"
		}
		return ""
	})
	id := w.b.ID()
	m.crashNode(w.b)
	m.waitFor("the dead node's request to be withdrawn", func() string {
		if pks := m.chk.View().Prepare[ch]; len(pks) > 0 {
			return fmt.Sprintf("%s still has %s", ch, pks[0].Key)
		}
		return ""
	})
	m.sync()
	end := m.chk.SessionEnd(id)
	gone, ok := m.rec.GoneAt(id)
	var del KeyChange
	for _, kc := range m.prepareChanges(ch, w.since) {
		if kc.Type == kv.EventDelete {
			del = kc
		}
	}
	switch {
	case end == 0 || !ok:
		m.fatalf("the request was withdrawn before %s's session ended", w.b.name)
	case del.Rev < end:
		m.fatalf("%s: request withdrawn at revision %d, before %s's session ended (%d)", ch, del.Rev, w.b.name, end)
	case del.Time.Sub(gone) >= m.tm.nodeTTL:
		m.fatalf("%s: request withdrawn %v after %s's session ended: a preparation needs no fence wait (node TTL %v)", ch, del.Time.Sub(gone), w.b.name, m.tm.nodeTTL)
	}
	m.requireStayed(w)
	m.requireNoPrepareKeys()
}

// mepSourceDiesWhilePrepared: the destination is prepared and the source,
// releasing, crashes (its Release hangs). The move is no longer a planned
// one: the channel fails over cold, after the source's fence, and the
// request is withdrawn; at no time does the channel run twice.
func mepSourceDiesWhilePrepared(t *testing.T, m *mep) {
	w := &warm{a: m.startNode()}
	w.coord = m.leaderCoord()
	w.chs = names("warmsrc", 2)
	for _, ch := range w.chs {
		w.a.h.StickRelease(ch)
	}
	m.register(1, w.chs...)
	m.settle()
	m.mark(w)
	w.b = m.startNode(withPreparer(nil))
	ch := m.waitPrepareState(w, w.b.ID(), meta.Prepared)
	m.waitFor(w.a.name+" to start releasing "+ch, func() string {
		if firstEvent(m.handlerEvents(ch, w.seq), w.a.name, ReleaseStart) == 0 {
			return "not yet"
		}
		return ""
	})
	m.crashNode(w.a)
	m.waitFor(ch+" to fail over to "+w.b.name, func() string {
		if a := m.chk.View().Assign[ch]; a.NodeID != w.b.ID() || a.Info.State != meta.Watched {
			return fmt.Sprintf("%s is %v on node %d", ch, a.Info.State, a.NodeID)
		}
		return ""
	})
	m.settle()
	m.requireNoPrepareKeys()
	var withdrawn int64
	for _, kc := range m.prepareChanges(ch, w.since) {
		if kc.Type == kv.EventDelete {
			withdrawn = kc.Rev
		}
	}
	if end := m.chk.SessionEnd(w.a.ID()); withdrawn == 0 || withdrawn < end {
		m.fatalf("%s: request withdrawn at revision %d, want once the source's session ended (%d)", ch, withdrawn, end)
	}
}

// warmFailover runs a warm move through a coordinator failover: the
// leader crashes while the destination prepares; with prepared set, the
// destination answers Prepared while no coordinator leads. The next
// leader re-lists the request and completes the move warm.
func (m *mep) warmFailover(name string, prepared bool) {
	var done func()
	w := m.warmStart(name, func(h *PreparingHandler) { done = h.HoldPrepare("") })
	ch := m.waitPrepareState(w, w.b.ID(), meta.ToPrepare)
	m.waitFor(w.b.name+" to call Prepare", func() string {
		if firstEvent(m.handlerEvents(ch, w.seq), w.b.name, PrepareStart) == 0 {
			return "not yet"
		}
		return ""
	})
	m.crashCoord(w.coord)
	if prepared {
		done()
		m.waitPrepareState(w, w.b.ID(), meta.Prepared)
	}
	next := m.startCoord()
	m.waitLeader(next)
	if !prepared {
		done()
	}
	m.waitBalanced("the move to complete under " + next.name)
	if onB := m.channelsOn(w.b.ID()); len(onB) != 1 || onB[0] != ch {
		m.fatalf("%s holds %v, want %s", w.b.name, onB, ch)
	}
	m.requireWarmMove(w, ch)
	m.requireNoPrepareKeys()
}

// mepCoordinatorFailoverWhilePreparing: see warmFailover.
func mepCoordinatorFailoverWhilePreparing(t *testing.T, m *mep) { m.warmFailover("warmcp", false) }

// mepCoordinatorFailoverWhilePrepared: see warmFailover.
func mepCoordinatorFailoverWhilePrepared(t *testing.T, m *mep) { m.warmFailover("warmcd", true) }

// mepPrepareKeysLeftBehind: prepare requests a new leader finds that no
// move can complete (left by a predecessor, or written by hand) are
// withdrawn: one on a node that never existed, one of a deregistered
// channel, one for a node that cannot prepare, a corrupt one. A request
// withdrawn by the next leader is gone for good: the cluster settles with
// no prepare key.
func mepPrepareKeysLeftBehind(t *testing.T, m *mep) {
	a := m.startNode()
	plain := m.startNode()
	chs := names("leftover", 2)
	m.register(1, chs...)
	m.putInfo(a.ID(), chs[0], meta.ToWatch, 0)
	m.waitState(chs[0], a.ID(), meta.Watched)
	m.putInfo(a.ID(), chs[1], meta.ToWatch, 0)
	m.waitState(chs[1], a.ID(), meta.Watched)
	req := func(node int64, ch string) {
		val, err := meta.EncodePrepareInfo(meta.ChannelInfo{Name: ch, CollectionID: 1, State: meta.ToPrepare})
		if err != nil {
			m.fatalf("encode: %v", err)
		}
		put(t, m.ctx, m.b, meta.PrepareKey(node, ch), string(val))
	}
	req(1<<40, chs[0])          // no such node
	req(plain.ID(), chs[1])     // a node that does not advertise Prepare
	req(a.ID(), "unregistered") // no such channel
	put(t, m.ctx, m.b, meta.PrepareKey(plain.ID(), "corrupt"), "{not json")
	m.leaderCoord()
	m.waitFor("every request left behind to be withdrawn", func() string {
		if pks := m.chk.View().Prepare; len(pks) > 0 {
			return fmt.Sprintf("%d channels with prepare keys", len(pks))
		}
		return ""
	})
	m.settle()
	m.requireNoPrepareKeys()
}

// mepPrepareProgress: a long Prepare that reports progress keeps its
// request past the watch timeout (each heartbeat re-arms it), and the
// channel stays running on its source meanwhile.
func mepPrepareProgress(t *testing.T, m *mep) {
	w := m.warmStart("warmlong", func(h *PreparingHandler) { h.PrepareUntilCancel("", m.tm.progress/2) })
	ch := m.waitPrepareState(w, w.b.ID(), meta.ToPrepare)
	m.elapse(2 * m.tm.watchTimeout)
	m.sync()
	pks := m.chk.View().Prepare[ch]
	if len(pks) != 1 || pks[0].Info.State != meta.ToPrepare || pks[0].Info.Progress == 0 {
		m.fatalf("%s after two watch timeouts: prepare keys %+v, want one ToPrepare with progress", ch, pks)
	}
	if countEvents(m.handlerEvents(ch, w.seq), w.b.name, UnprepareEnd) != 0 {
		m.fatalf("%s: a preparation that reports progress was withdrawn", ch)
	}
	m.requireStayed(w)
	// A destination that dies costs nothing but the preparation.
	m.crashNode(w.b)
	m.waitFor("the dead node's request to be withdrawn", func() string {
		if pks := m.chk.View().Prepare[ch]; len(pks) > 0 {
			return fmt.Sprintf("%s still has %s", ch, pks[0].Key)
		}
		return ""
	})
	m.requireStayed(w)
}

// mepPrepareMoveLimit: with at most one planned move in flight per node, a
// warm move counts from its prepare request: while the destination holds
// one preparation, no second request is made.
func mepPrepareMoveLimit(t *testing.T, m *mep) {
	a := m.startNode()
	m.waitLeader(m.startCoord(channelmgr.WithNodeMoveLimit(1)))
	chs := names("warmlimit", 6)
	m.register(1, chs...)
	m.settle()
	var done func()
	b := m.startNode(withPreparer(func(h *PreparingHandler) { done = h.HoldPrepare("") }))
	m.waitFor("a prepare request on "+b.name, func() string {
		if len(m.chk.View().Prepare) == 0 {
			return "none yet"
		}
		return ""
	})
	m.elapse(5 * m.tm.check)
	if n := len(m.chk.View().Prepare); n != 1 {
		m.fatalf("%d prepare requests in flight, want 1 (the node move limit)", n)
	}
	done()
	m.waitBalanced("the channels to spread onto " + b.name)
	m.requireNoPrepareKeys()
	if got := len(m.channelsOn(a.ID())); got != len(chs)/2 {
		m.fatalf("%s holds %d channels, want %d", a.name, got, len(chs)/2)
	}
}

// drainWarm drains w.a (the scenario paused balancing, so only the drain
// moves channels) and waits until w.b holds them all.
func (m *mep) drainWarm(w *warm) {
	m.t.Helper()
	m.mark(w)
	if err := session.Drain(m.ctx, m.b, w.a.ID()); err != nil {
		m.fatalf("Drain(%s): %v", w.a.name, err)
	}
	m.waitFor(w.a.name+" to be drained onto "+w.b.name, func() string {
		if on := m.channelsOn(w.b.ID()); len(on) != len(w.chs) {
			return fmt.Sprintf("%s holds %v", w.b.name, on)
		}
		return m.unsettled()
	})
}

// mepPrepareOnDrain: a drain moves a running channel warm when the node
// the policy picks for it can prepare: the stopping node releases it only
// once the destination is prepared.
func mepPrepareOnDrain(t *testing.T, m *mep) {
	w := &warm{a: m.startNode()}
	w.coord = m.leaderCoord()
	w.chs = names("warmdrain", 2)
	m.register(1, w.chs...)
	m.settle()
	if err := channelmgr.PauseBalance(m.ctx, m.b); err != nil {
		m.fatalf("PauseBalance: %v", err)
	}
	w.b = m.startNode(withPreparer(nil))
	m.drainWarm(w)
	for _, ch := range w.chs {
		m.requireWarmMove(w, ch)
	}
	m.requireNoPrepareKeys()
}

// mepPrepareFailsOnDrain: a drain whose destination fails to prepare
// still completes: after the failure the channel moves cold.
func mepPrepareFailsOnDrain(t *testing.T, m *mep) {
	w := &warm{a: m.startNode()}
	w.coord = m.leaderCoord()
	w.chs = names("colddrain", 2)
	m.register(1, w.chs...)
	m.settle()
	if err := channelmgr.PauseBalance(m.ctx, m.b); err != nil {
		m.fatalf("PauseBalance: %v", err)
	}
	w.b = m.startNode(withPreparer(func(h *PreparingHandler) { h.FailPrepare("", -1) }))
	m.drainWarm(w)
	m.requireNoPrepareKeys()
	for _, ch := range w.chs {
		failed := false
		for _, kc := range m.prepareChanges(ch, w.since) {
			failed = failed || (kc.Type == kv.EventPut && kc.Info.State == meta.PrepareFailure)
		}
		if !failed {
			m.fatalf("%s: no PrepareFailure before its cold move: %v", ch, m.prepareChanges(ch, w.since))
		}
	}
}

// mepCorruptRequestOnDrain: a leader finds a drained node's running
// channel with a prepare request on the drain's only preparing destination
// that it must withdraw (here a corrupt one, left while no coordinator
// led). Withdrawing that request and asking the same node to prepare again
// would write one key twice in one txn, which every backend refuses (etcd:
// "duplicate key given in txn request") every pass: the drain must still
// complete, and no prepare key stay behind.
func mepCorruptRequestOnDrain(t *testing.T, m *mep) {
	w := &warm{a: m.startNode()}
	w.coord = m.leaderCoord()
	w.chs = names("warmbad", 2)
	m.register(1, w.chs...)
	m.settle()
	if err := channelmgr.PauseBalance(m.ctx, m.b); err != nil {
		m.fatalf("PauseBalance: %v", err)
	}
	w.b = m.startNode(withPreparer(nil))
	m.sync()
	m.crashCoord(w.coord)
	put(t, m.ctx, m.b, meta.PrepareKey(w.b.ID(), w.chs[0]), "{not json")
	m.mark(w)
	if err := session.Drain(m.ctx, m.b, w.a.ID()); err != nil {
		m.fatalf("Drain(%s): %v", w.a.name, err)
	}
	w.coord = m.startCoord()
	m.waitLeader(w.coord)
	m.waitFor(w.a.name+" to be drained onto "+w.b.name, func() string {
		if on := m.channelsOn(w.b.ID()); len(on) != len(w.chs) {
			return fmt.Sprintf("%s holds %v; prepare keys %v", w.b.name, on, m.chk.View().Prepare)
		}
		return m.unsettled()
	})
	m.requireNoPrepareKeys()
}
