package audit

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/nodewatch"
)

// HandlerEventKind names one step of a handler call.
type HandlerEventKind int

// Handler event kinds.
const (
	WatchStart HandlerEventKind = iota + 1
	WatchEnd
	ReleaseStart
	ReleaseEnd
	// Warm handoff (PreparingHandler): a preparation never runs the
	// channel, so these open no Interval.
	PrepareStart
	PrepareEnd
	UnprepareEnd
)

func (k HandlerEventKind) String() string {
	switch k {
	case WatchStart:
		return "WatchStart"
	case WatchEnd:
		return "WatchEnd"
	case ReleaseStart:
		return "ReleaseStart"
	case ReleaseEnd:
		return "ReleaseEnd"
	case PrepareStart:
		return "PrepareStart"
	case PrepareEnd:
		return "PrepareEnd"
	case UnprepareEnd:
		return "UnprepareEnd"
	}
	return fmt.Sprintf("HandlerEventKind(%d)", int(k))
}

// HandlerEvent is one logged handler step.
type HandlerEvent struct {
	// Seq orders every event of a Recorder (one counter for all nodes).
	Seq int64
	// Time is the Recorder's clock at the event.
	Time time.Time
	// Node is the process (the RecordingHandler's name), which keeps its
	// name when it re-registers under a new node ID.
	Node string
	// NodeID is the node ID the process had when the event happened (0 if
	// unknown).
	NodeID  int64
	Channel string
	// Token is the AssignRevision the Watch got (0 for Release events).
	Token int64
	Kind  HandlerEventKind
	// Err is what Watch or Release returned (End events).
	Err error
}

func (e HandlerEvent) String() string {
	s := fmt.Sprintf("#%d %s %s node=%s(id %d) ch=%s", e.Seq, e.Time.Format("15:04:05.000"), e.Kind, e.Node, e.NodeID, e.Channel)
	if e.Token != 0 {
		s += fmt.Sprintf(" token=%d", e.Token)
	}
	if e.Err != nil {
		s += fmt.Sprintf(" err=%v", e.Err)
	}
	return s
}

// Interval is the time one process ran one channel: from its handler's
// Watch start to its Release returning.
type Interval struct {
	Node     string
	NodeID   int64
	Channel  string
	Token    int64
	Start    time.Time
	StartSeq int64
	// End and EndSeq are zero while the interval is open.
	End    time.Time
	EndSeq int64
	// Stuck marks an interval whose Release was made to hang by the test:
	// the process is, for the protocol, a paused one.
	Stuck bool
	// Crashed marks an interval closed because its process crashed.
	Crashed bool
}

// Open reports whether the channel still runs.
func (iv *Interval) Open() bool { return iv.EndSeq == 0 }

// goneNode is a node whose session key was deleted (lease expired or revoked).
type goneNode struct {
	at  time.Time
	rev int64
	ttl time.Duration
}

// Recorder logs every Watch start and Release end of every node of a
// scenario and checks invariant (2) at each Watch start: at most one
// process runs a channel at any instant (an overlap is a violation), and
// the fencing tokens of one channel never go backwards. A process whose
// session has been gone for one TTL (minus Tolerance) no longer counts as
// running, since the protocol only promises that it has stopped by then;
// if it still runs a channel it is reported as not fenced, unless the test
// made its Release hang (a paused process, which only the token covers).
// Methods are safe for concurrent use.
type Recorder struct {
	clock clockwork.Clock
	// Tolerance is how much earlier than gone+TTL a new Watch elsewhere is
	// still accepted: the slack between when the suite observes a session
	// deletion and when it happened.
	tolerance time.Duration

	mu        sync.Mutex
	seq       int64
	events    []HandlerEvent
	intervals []*Interval
	open      map[string]map[string]*Interval // channel -> node -> open interval
	maxToken  map[string]int64                // channel -> largest token watched
	seen      map[string]map[int64]bool       // channel -> tokens watched
	gone      map[int64]goneNode              // node ID -> when its session ended
	dead      map[string]bool                 // crashed processes
	// failedRel: channel -> process whose last Release of it failed, so
	// its handler may still hold it (the Handler contract retries Release
	// before any new Watch there).
	failedRel  map[string]map[string]bool
	violations []string
}

// NewRecorder returns a Recorder that timestamps with clock (nil: real).
func NewRecorder(clock clockwork.Clock, tolerance time.Duration) *Recorder {
	if clock == nil {
		clock = clockwork.NewRealClock()
	}
	return &Recorder{
		clock:     clock,
		tolerance: tolerance,
		open:      make(map[string]map[string]*Interval),
		maxToken:  make(map[string]int64),
		seen:      make(map[string]map[int64]bool),
		gone:      make(map[int64]goneNode),
		failedRel: make(map[string]map[string]bool),
		dead:      make(map[string]bool),
	}
}

// Handler returns the recording handler of process node. id reports the
// node's current ID (it may change when the node re-registers); it may be
// nil.
func (r *Recorder) Handler(node string, id func() int64) *RecordingHandler {
	if id == nil {
		id = func() int64 { return 0 }
	}
	return &RecordingHandler{rec: r, node: node, id: id, scripts: make(map[string]*script)}
}

func (r *Recorder) violate(format string, args ...any) {
	r.violations = append(r.violations, fmt.Sprintf(format, args...))
}

func (r *Recorder) logLocked(e HandlerEvent) HandlerEvent {
	r.seq++
	e.Seq = r.seq
	e.Time = r.clock.Now()
	r.events = append(r.events, e)
	return e
}

// watchStart records a Watch start and checks the invariant. It returns
// false when the process is dead (a crashed process runs nothing).
func (r *Recorder) watchStart(node string, nodeID int64, info meta.ChannelInfo) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.dead[node] {
		return false
	}
	ch := info.Name
	e := r.logLocked(HandlerEvent{Node: node, NodeID: nodeID, Channel: ch, Token: info.AssignRevision, Kind: WatchStart})
	if info.AssignRevision <= 0 {
		r.violate("channel %s: Watch on %s (node %d) got no fencing token (AssignRevision %d)", ch, node, nodeID, info.AssignRevision)
	}
	if info.AssignRevision < r.maxToken[ch] {
		r.violate("channel %s: token went backwards: Watch on %s (node %d) with token %d after token %d",
			ch, node, nodeID, info.AssignRevision, r.maxToken[ch])
	}
	if r.seen[ch] == nil {
		r.seen[ch] = make(map[int64]bool)
	}
	if info.AssignRevision > 0 && r.seen[ch][info.AssignRevision] {
		r.violate("channel %s: assignment with token %d watched twice (now on %s, node %d)", ch, info.AssignRevision, node, nodeID)
	}
	r.seen[ch][info.AssignRevision] = true
	r.maxToken[ch] = max(r.maxToken[ch], info.AssignRevision)
	if r.failedRel[ch][node] {
		r.violate("channel %s: Watch on %s (node %d, token %d) after its Release there failed, with no successful Release in between",
			ch, node, nodeID, info.AssignRevision)
	}
	for other, iv := range r.open[ch] {
		if r.abandonedLocked(iv, e.Time) {
			continue
		}
		who := "another process"
		if other == node {
			who = "the same process (Watch again without Release)"
		}
		r.violate("channel %s: overlap: Watch on %s (node %d, token %d) at #%d while %s %s (node %d, token %d) runs it since #%d",
			ch, node, nodeID, info.AssignRevision, e.Seq, who, other, iv.NodeID, iv.Token, iv.StartSeq)
	}
	if r.open[ch] == nil {
		r.open[ch] = make(map[string]*Interval)
	}
	iv := &Interval{Node: node, NodeID: nodeID, Channel: ch, Token: info.AssignRevision, Start: e.Time, StartSeq: e.Seq}
	r.open[ch][node] = iv
	r.intervals = append(r.intervals, iv)
	return true
}

// abandonedLocked reports whether open interval iv no longer counts as
// running at now: its node's session has been gone for one TTL. A
// non-stuck interval in that state means the node did not fence.
func (r *Recorder) abandonedLocked(iv *Interval, now time.Time) bool {
	g, ok := r.gone[iv.NodeID]
	if !ok || now.Before(g.at.Add(g.ttl-r.tolerance)) {
		return false
	}
	if !iv.Stuck {
		r.violate("channel %s: node %s (id %d) still runs it (token %d) one TTL (%v) after its session ended at revision %d: it did not fence",
			iv.Channel, iv.Node, iv.NodeID, iv.Token, g.ttl, g.rev)
		iv.Stuck = true // report once
	}
	return true
}

func (r *Recorder) watchEnd(node string, nodeID int64, info meta.ChannelInfo, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.dead[node] {
		return
	}
	r.logLocked(HandlerEvent{Node: node, NodeID: nodeID, Channel: info.Name, Token: info.AssignRevision, Kind: WatchEnd, Err: err})
}

func (r *Recorder) releaseStart(node string, nodeID int64, ch string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.dead[node] {
		return
	}
	r.logLocked(HandlerEvent{Node: node, NodeID: nodeID, Channel: ch, Kind: ReleaseStart})
}

func (r *Recorder) markStuck(node, ch string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if iv := r.open[ch][node]; iv != nil {
		iv.Stuck = true
	}
}

func (r *Recorder) releaseEnd(node string, nodeID int64, ch string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.dead[node] {
		return
	}
	e := r.logLocked(HandlerEvent{Node: node, NodeID: nodeID, Channel: ch, Kind: ReleaseEnd, Err: err})
	if err != nil {
		if r.failedRel[ch] == nil {
			r.failedRel[ch] = make(map[string]bool)
		}
		r.failedRel[ch][node] = true
	} else {
		delete(r.failedRel[ch], node)
	}
	if iv := r.open[ch][node]; iv != nil {
		iv.End, iv.EndSeq = e.Time, e.Seq
		delete(r.open[ch], node)
	}
}

// Crash marks process node dead at this instant: a crashed process runs
// nothing, so its open intervals end now, and anything its goroutines
// still do afterwards is not recorded (its Watch calls fail at once).
func (r *Recorder) Crash(node string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dead[node] = true
	now := r.clock.Now()
	r.seq++
	for _, m := range r.open {
		if iv := m[node]; iv != nil {
			iv.End, iv.EndSeq, iv.Crashed = now, r.seq, true
			delete(m, node)
		}
	}
	r.events = append(r.events, HandlerEvent{Seq: r.seq, Time: now, Node: node, Kind: ReleaseEnd, Channel: "*crash*"})
}

// SessionGone tells the Recorder that node nodeID's session key was
// deleted at revision rev, now, and that the node's TTL is ttl.
func (r *Recorder) SessionGone(nodeID, rev int64, ttl time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.gone[nodeID]; !ok {
		r.gone[nodeID] = goneNode{at: r.clock.Now(), rev: rev, ttl: ttl}
	}
}

// CheckFenced reports, as violations, open non-stuck intervals of nodes
// whose session has been gone for a TTL: such a node did not fence.
func (r *Recorder) CheckFenced() {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.clock.Now()
	for _, m := range r.open {
		for _, iv := range m {
			r.abandonedLocked(iv, now)
		}
	}
}

// OpenOf returns the open intervals of process node on node ID id (0: any ID).
func (r *Recorder) OpenOf(node string, id int64) []Interval {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Interval
	for _, m := range r.open {
		if iv := m[node]; iv != nil && (id == 0 || iv.NodeID == id) {
			out = append(out, *iv)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Channel < out[j].Channel })
	return out
}

// OpenOfID returns the open intervals of whichever process ran as node ID id.
func (r *Recorder) OpenOfID(id int64) []Interval {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Interval
	for _, m := range r.open {
		for _, iv := range m {
			if iv.NodeID == id {
				out = append(out, *iv)
			}
		}
	}
	return out
}

// Running returns, per channel, the processes that run it now (stuck
// intervals left out).
func (r *Recorder) Running() map[string][]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string][]string)
	for ch, m := range r.open {
		for node, iv := range m {
			if !iv.Stuck {
				out[ch] = append(out[ch], node)
			}
		}
	}
	return out
}

// RunsOn reports the process that runs ch now ("" if none) and its token.
// Stuck intervals (a handler the test made hang) do not count.
func (r *Recorder) RunsOn(ch string) (string, int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for node, iv := range r.open[ch] {
		if !iv.Stuck {
			return node, iv.Token
		}
	}
	return "", 0
}

// Intervals returns a copy of every interval, in start order.
func (r *Recorder) Intervals() []Interval {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Interval, 0, len(r.intervals))
	for _, iv := range r.intervals {
		out = append(out, *iv)
	}
	return out
}

// Events returns a copy of the log.
func (r *Recorder) Events() []HandlerEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]HandlerEvent(nil), r.events...)
}

// WatchStarts counts Watch starts of ch (every channel when ch is "")
// after sequence number since.
func (r *Recorder) WatchStarts(ch string, since int64) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.events {
		if e.Seq > since && e.Kind == WatchStart && (ch == "" || e.Channel == ch) {
			n++
		}
	}
	return n
}

// Seq returns the last sequence number handed out.
func (r *Recorder) Seq() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seq
}

// Violations returns every invariant violation seen so far.
func (r *Recorder) Violations() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.violations...)
}

// Dump formats the log, optionally restricted to some channels.
func (r *Recorder) Dump(channels ...string) string {
	want := make(map[string]bool, len(channels))
	for _, c := range channels {
		want[c] = true
	}
	var b strings.Builder
	for _, e := range r.Events() {
		if len(want) == 0 || want[e.Channel] || e.Channel == "*crash*" {
			b.WriteString(e.String())
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// errCrashed is what a crashed process's handler returns.
var errCrashed = errors.New("audit: process crashed")

// ErrInjected is the error the scripted handler failures return.
var ErrInjected = errors.New("audit: injected handler failure")

// script is the scripted behaviour of one channel (or of every channel).
type script struct {
	failWatch    int // Watch calls left to fail; < 0: always
	panicWatch   bool
	slowWatch    time.Duration
	slowEvery    time.Duration // SlowWatch reports progress this often (0: never)
	untilCancel  bool          // Watch returns only when its ctx ends
	cancelEvery  time.Duration // ... reporting progress this often (0: never)
	reportOnce   time.Duration // ... after reporting progress once, this long after it started
	slowRelease  time.Duration
	relEvery     time.Duration // SlowRelease reports progress this often (0: never)
	blockWatch   chan struct{} // Watch ignores ctx until closed
	failRelease  int
	panicRelease bool
	stuckRelease chan struct{} // Release ignores ctx until closed
	// PreparingHandler's scripts.
	failPrepare  int
	prepareHang  bool          // Prepare returns only when its ctx ends
	prepareEvery time.Duration // ... reporting progress this often (0: never)
	prepareGate  chan struct{} // Prepare waits until closed (or its ctx ends)
}

// RecordingHandler is a nodewatch.Handler that records every call in its
// Recorder and can be scripted per channel to fail, panic, be slow or hang.
// Without a script Watch and Release succeed at once. Methods are safe for
// concurrent use.
type RecordingHandler struct {
	rec  *Recorder
	node string
	id   func() int64

	mu      sync.Mutex
	scripts map[string]*script // "" applies to every channel without its own
	gates   []chan struct{}    // every gate handed out, closed by UnblockAll
}

// Name returns the process name the handler records under.
func (h *RecordingHandler) Name() string { return h.node }

func (h *RecordingHandler) scriptFor(ch string) *script {
	if s := h.scripts[ch]; s != nil {
		return s
	}
	return h.scripts[""]
}

func (h *RecordingHandler) edit(ch string, f func(*script)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.scripts[ch]
	if s == nil {
		s = &script{}
		h.scripts[ch] = s
	}
	f(s)
}

func (h *RecordingHandler) gate() chan struct{} {
	g := make(chan struct{})
	h.gates = append(h.gates, g)
	return g
}

func closer(g chan struct{}) func() {
	var once sync.Once
	return func() { once.Do(func() { close(g) }) }
}

// FailWatch makes the next n Watch calls of ch fail (n < 0: every call);
// ch "" means every channel.
func (h *RecordingHandler) FailWatch(ch string, n int) {
	h.edit(ch, func(s *script) { s.failWatch = n })
}

// PanicWatch makes Watch of ch panic.
func (h *RecordingHandler) PanicWatch(ch string) { h.edit(ch, func(s *script) { s.panicWatch = true }) }

// SlowWatch makes Watch of ch take d on the clock (returning ctx's error
// early if its ctx ends), reporting progress (nodewatch.ReportProgress)
// every `every` of the clock (0: never; a slow Watch that looks stuck).
func (h *RecordingHandler) SlowWatch(ch string, d, every time.Duration) {
	h.edit(ch, func(s *script) { s.slowWatch, s.slowEvery = d, every })
}

// WatchUntilCancel makes Watch of ch return only when its ctx ends,
// without reporting progress: a Watch that is stuck but honours its ctx.
func (h *RecordingHandler) WatchUntilCancel(ch string) {
	h.edit(ch, func(s *script) { s.untilCancel = true })
}

// WatchProgressUntilCancel makes Watch of ch return only when its ctx
// ends, reporting progress every `every` of the clock meanwhile: a Watch
// that never finishes but always looks busy.
func (h *RecordingHandler) WatchProgressUntilCancel(ch string, every time.Duration) {
	h.edit(ch, func(s *script) { s.untilCancel, s.cancelEvery = true, every })
}

// WatchProgressOnce makes Watch of ch report progress once, after on the
// clock, then return only when its ctx ends: a Watch that hangs after a
// first sign of life.
func (h *RecordingHandler) WatchProgressOnce(ch string, after time.Duration) {
	h.edit(ch, func(s *script) { s.untilCancel, s.reportOnce = true, after })
}

// SlowRelease makes Release of ch take d on the clock (its ctx ending
// early makes it return ctx's error), reporting progress every `every`
// (0: never): a long flush.
func (h *RecordingHandler) SlowRelease(ch string, d, every time.Duration) {
	h.edit(ch, func(s *script) { s.slowRelease, s.relEvery = d, every })
}

// busy waits d on the clock (forever when d <= 0) or until ctx ends,
// reporting progress every `every` (0: never) and once after `once` (0:
// never). It returns ctx's error if ctx ended first.
func (h *RecordingHandler) busy(ctx context.Context, d, every, once time.Duration) error {
	var doneC, everyC, onceC <-chan time.Time
	if d > 0 {
		t := h.rec.clock.NewTimer(d)
		defer t.Stop()
		doneC = t.Chan()
	}
	if every > 0 {
		t := h.rec.clock.NewTicker(every)
		defer t.Stop()
		everyC = t.Chan()
	}
	if once > 0 {
		t := h.rec.clock.NewTimer(once)
		defer t.Stop()
		onceC = t.Chan()
	}
	for {
		select {
		case <-doneC:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-everyC:
			nodewatch.ReportProgress(ctx)
		case <-onceC:
			nodewatch.ReportProgress(ctx)
		}
	}
}

// BlockWatch makes Watch of ch hang, ignoring its ctx, until unblock is
// called (a handler that never returns). The Recorder treats the process as
// paused for that channel.
func (h *RecordingHandler) BlockWatch(ch string) (unblock func()) {
	h.mu.Lock()
	g := h.gate()
	h.mu.Unlock()
	h.edit(ch, func(s *script) { s.blockWatch = g })
	return closer(g)
}

// FailRelease makes the next n Release calls of ch fail (n < 0: always).
func (h *RecordingHandler) FailRelease(ch string, n int) {
	h.edit(ch, func(s *script) { s.failRelease = n })
}

// PanicRelease makes Release of ch panic.
func (h *RecordingHandler) PanicRelease(ch string) {
	h.edit(ch, func(s *script) { s.panicRelease = true })
}

// StickRelease makes Release of ch hang, ignoring its ctx, until unstick
// is called. The Recorder treats the process as paused for that channel.
func (h *RecordingHandler) StickRelease(ch string) (unstick func()) {
	h.mu.Lock()
	g := h.gate()
	h.mu.Unlock()
	h.edit(ch, func(s *script) { s.stuckRelease = g })
	return closer(g)
}

// Clear removes the script of ch.
func (h *RecordingHandler) Clear(ch string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.scripts, ch)
}

// UnblockAll releases every hung Watch and Release and clears every
// script, so that the process's goroutines can finish.
func (h *RecordingHandler) UnblockAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, g := range h.gates {
		select {
		case <-g:
		default:
			close(g)
		}
	}
	h.gates = nil
	h.scripts = make(map[string]*script)
}

// Watch records the call and runs the channel's script.
func (h *RecordingHandler) Watch(ctx context.Context, info meta.ChannelInfo) (err error) {
	id := h.id()
	if !h.rec.watchStart(h.node, id, info) {
		return errCrashed
	}
	defer func() {
		if p := recover(); p != nil {
			h.rec.watchEnd(h.node, id, info, fmt.Errorf("panic: %v", p))
			panic(p)
		}
		h.rec.watchEnd(h.node, id, info, err)
	}()

	h.mu.Lock()
	var s script
	if p := h.scriptFor(info.Name); p != nil {
		s = *p
		if p.failWatch > 0 {
			p.failWatch--
		}
	}
	h.mu.Unlock()
	switch {
	case s.panicWatch:
		panic(fmt.Sprintf("audit: scripted panic in Watch(%s)", info.Name))
	case s.failWatch != 0:
		return fmt.Errorf("%w: Watch(%s)", ErrInjected, info.Name)
	case s.blockWatch != nil:
		h.rec.markStuck(h.node, info.Name)
		<-s.blockWatch
	case s.untilCancel:
		return h.busy(ctx, 0, s.cancelEvery, s.reportOnce)
	case s.slowWatch > 0:
		return h.busy(ctx, s.slowWatch, s.slowEvery, 0)
	}
	return nil
}

// Release runs the channel's script and records the call's end.
func (h *RecordingHandler) Release(ctx context.Context, ch string) (err error) {
	id := h.id()
	h.rec.releaseStart(h.node, id, ch)
	defer func() {
		if p := recover(); p != nil {
			h.rec.releaseEnd(h.node, id, ch, fmt.Errorf("panic: %v", p))
			panic(p)
		}
		h.rec.releaseEnd(h.node, id, ch, err)
	}()

	h.mu.Lock()
	var s script
	if p := h.scriptFor(ch); p != nil {
		s = *p
		if p.failRelease > 0 {
			p.failRelease--
		}
	}
	h.mu.Unlock()
	switch {
	case s.panicRelease:
		panic(fmt.Sprintf("audit: scripted panic in Release(%s)", ch))
	case s.stuckRelease != nil:
		h.rec.markStuck(h.node, ch)
		<-s.stuckRelease
	case s.failRelease != 0:
		return fmt.Errorf("%w: Release(%s)", ErrInjected, ch)
	case s.slowRelease > 0:
		return h.busy(ctx, s.slowRelease, s.relEvery, 0)
	}
	return nil
}

// GoneAt returns when the Recorder learnt that node id's session ended.
func (r *Recorder) GoneAt(id int64) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	g, ok := r.gone[id]
	return g.at, ok
}
