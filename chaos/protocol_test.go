package chaos

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/channelmgr"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/nodewatch"
)

// ledger is the downstream store every handler writes its side effects to,
// stamped with the assignment's fencing token, and the record of who ran
// which channel when. It checks, as effects arrive:
//   - at most one node runs a channel at any instant (Watch start to
//     Release end), except a node the test paused (SIGSTOP), which only
//     the token covers;
//   - per channel, tokens never go backwards, and one node holds each token;
//   - an effect with a token older than the newest one started on its
//     channel is rejected (counted), as a fencing downstream would.
type ledger struct {
	r *report

	mu       sync.Mutex
	open     map[string]map[string]*interval // channel -> node -> running interval
	done     []interval
	maxTok   map[string]int64
	holder   map[string]map[int64]string // channel -> token -> node
	dead     map[string]bool             // crashed nodes: their later calls are ignored
	paused   map[string]bool
	accepted int
	rejected int // stale effects a fencing downstream refused
	// rejectedFrom counts rejected effects per node.
	rejectedFrom  map[string]int
	starts        map[string]int // Watch starts per node
	staleStarts   int            // Watch starts of a paused node under a stale token
	overlap       time.Duration  // total overlap of ownership intervals of unpaused nodes
	pausedOver    int            // overlaps involving a paused node (the documented exception)
	pausedOverlap time.Duration
}

type interval struct {
	node       string
	id, token  int64
	ch         string
	start, end time.Time
	paused     bool // the node was paused while it ran: only the token fences it
}

func newLedger(r *report) *ledger {
	return &ledger{r: r, open: map[string]map[string]*interval{}, maxTok: map[string]int64{},
		holder: map[string]map[int64]string{}, dead: map[string]bool{}, paused: map[string]bool{}, rejectedFrom: map[string]int{}, starts: map[string]int{}}
}

// start records node starting ch under token; false when the node is dead.
func (l *ledger) start(node string, id int64, ch string, token int64) bool {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dead[node] {
		return false
	}
	if token < l.maxTok[ch] {
		if l.paused[node] {
			// A paused process resumes inside a Watch it began before the
			// pause: a stale start, which a fencing downstream refuses.
			l.rejected++
			l.rejectedFrom[node]++
			l.staleStarts++
			l.r.note("channel %s: stale start on paused %s with token %d < %d: rejected", ch, node, token, l.maxTok[ch])
			return true
		}
		l.r.violate("channel %s: token went backwards on %s: %d after %d", ch, node, token, l.maxTok[ch])
	}
	for other, iv := range l.open[ch] {
		if other == node {
			continue
		}
		if l.paused[other] || l.paused[node] {
			l.pausedOver++
			l.r.note("channel %s started on %s (token %d) while %s still holds token %d: only the token fences it (a paused process)", ch, node, token, other, iv.token)
			continue
		}
		l.r.violate("channel %s started on %s (id %d, token %d) while %s (id %d, token %d) still runs it since %v",
			ch, node, id, token, other, iv.id, iv.token, now.Sub(iv.start).Round(time.Millisecond))
	}
	if h := l.holder[ch][token]; h != "" && h != node {
		l.r.violate("channel %s: token %d held by %s and %s", ch, token, h, node)
	}
	if l.holder[ch] == nil {
		l.holder[ch] = map[int64]string{}
	}
	l.holder[ch][token] = node
	l.maxTok[ch] = max(l.maxTok[ch], token)
	if l.open[ch] == nil {
		l.open[ch] = map[string]*interval{}
	}
	l.starts[node]++
	l.open[ch][node] = &interval{node: node, id: id, token: token, ch: ch, start: now, paused: l.paused[node]}
	return true
}

// end records node releasing ch.
func (l *ledger) end(node, ch string) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.endLocked(node, ch, now)
}

func (l *ledger) endLocked(node, ch string, now time.Time) {
	iv := l.open[ch][node]
	if iv == nil {
		return
	}
	delete(l.open[ch], node)
	iv.end = now
	for _, other := range l.done {
		if other.ch != ch || other.node == node {
			continue
		}
		if o := minTime(iv.end, other.end).Sub(maxTime(iv.start, other.start)); o > 0 {
			if iv.paused || other.paused {
				l.pausedOverlap += o
			} else {
				l.overlap += o
			}
		}
	}
	l.done = append(l.done, *iv)
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// effect is one side effect of node on ch under token; false when the
// downstream rejected it as stale.
func (l *ledger) effect(node, ch string, token int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dead[node] {
		return false
	}
	if token < l.maxTok[ch] {
		l.rejected++
		l.rejectedFrom[node]++
		return false
	}
	if h := l.holder[ch][token]; h != node {
		l.r.violate("channel %s: effect from %s under token %d, which %s holds", ch, node, token, h)
	}
	l.accepted++
	return true
}

// crash marks node dead at once: a crashed process runs nothing, so its
// intervals end now and its later calls are ignored.
func (l *ledger) crash(node string) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dead[node] = true
	for ch := range l.open {
		l.endLocked(node, ch, now)
	}
}

func (l *ledger) setPaused(node string, p bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.paused[node] = p
	for _, m := range l.open {
		if iv := m[node]; iv != nil && p {
			iv.paused = true
		}
	}
}

// runningOn returns channel -> nodes with an open interval.
func (l *ledger) runningOn() map[string][]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string][]string{}
	for ch, m := range l.open {
		for n := range m {
			out[ch] = append(out[ch], n)
		}
		sort.Strings(out[ch])
	}
	return out
}

// runningIDs returns channel -> node ID of the (last) open interval.
func (l *ledger) runningIDs() map[string]int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]int64{}
	for ch, m := range l.open {
		for _, iv := range m {
			out[ch] = iv.id
		}
	}
	return out
}

// maxID is the highest node ID node has run a channel under (0: none).
func (l *ledger) maxID(node string) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var id int64
	for _, m := range l.open {
		if iv := m[node]; iv != nil {
			id = max(id, iv.id)
		}
	}
	for _, iv := range l.done {
		if iv.node == node {
			id = max(id, iv.id)
		}
	}
	return id
}

// openOf counts node's open intervals.
func (l *ledger) openOf(node string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.open {
		if m[node] != nil {
			n++
		}
	}
	return n
}

func (l *ledger) figures() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.r.figure("overlap_ms", l.overlap.Milliseconds())
	if l.pausedOverlap > 0 {
		l.r.figure("paused_overlap_ms", l.pausedOverlap.Milliseconds())
	}
	l.r.figure("effects", l.accepted)
	l.r.figure("stale_rejected", l.rejected)
	total := 0
	for _, n := range l.starts {
		total += n
	}
	l.r.figure("watch_starts", total)
	if l.paused != nil && len(l.rejectedFrom) > 0 || l.staleStarts > 0 {
		l.r.figure("stale_starts", l.staleStarts)
	}
	// Each overlap was already a violation when the second Watch started.
}

// ledgerHandler is an in-process node's Handler: each running channel writes
// an effect every 10ms, stamped with its token, until its ctx ends.
type ledgerHandler struct {
	l    *ledger
	node string
	id   func() int64

	mu    sync.Mutex
	stops map[string]func()
}

func (h *ledgerHandler) Watch(ctx context.Context, info meta.ChannelInfo) error {
	if !h.l.start(h.node, h.id(), info.Name, info.AssignRevision) {
		return errors.New("crashed")
	}
	ectx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ectx.Done():
				return
			case <-tick.C:
				h.l.effect(h.node, info.Name, info.AssignRevision)
			}
		}
	}()
	h.mu.Lock()
	h.stops[info.Name] = func() { cancel(); <-done }
	h.mu.Unlock()
	return nil
}

func (h *ledgerHandler) Release(ctx context.Context, ch string) error {
	h.mu.Lock()
	stop := h.stops[ch]
	delete(h.stops, ch)
	h.mu.Unlock()
	if stop != nil {
		stop()
	}
	h.l.end(h.node, ch)
	return nil
}

// timing is the protocol's timers in a test.
type timing struct {
	ttl       time.Duration // node and coordinator lease TTL
	check     time.Duration
	opTimeout time.Duration // watch and release timeouts
}

func fastTiming(ttl time.Duration) timing {
	return timing{ttl: ttl, check: 50 * time.Millisecond, opTimeout: 3 * ttl}
}

// member is a node or a coordinator: a process with its own backend handle.
type member struct {
	name    string
	b       kv.Backend
	cancel  context.CancelFunc
	done    chan error
	closeFn func() // closes the handle (and its client): the process dies

	node  *nodewatch.Node
	coord *channelmgr.Coordinator
}

// kill crashes the member: its handle closes first (nothing more reaches the
// store), then its goroutines stop.
func (m *member) kill() {
	m.closeFn()
	m.cancel()
	<-m.done
}

// stop ends the member gracefully (ctx cancelled: nodes release, coordinators
// resign), then closes its handle.
func (m *member) stop() {
	m.cancel()
	<-m.done
	m.closeFn()
}

func startNode(t testing.TB, l *ledger, name string, b kv.Backend, closeFn func(), tm timing, opts ...nodewatch.Option) *member {
	t.Helper()
	m := &member{name: name, b: b, closeFn: closeFn, done: make(chan error, 1)}
	h := &ledgerHandler{l: l, node: name, stops: map[string]func(){}}
	n, err := nodewatch.New(b, h, append([]nodewatch.Option{
		nodewatch.WithSessionTTL(tm.ttl), nodewatch.WithProgressInterval(tm.ttl / 2), nodewatch.WithAddr(name),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	h.id = n.ID
	m.node = n
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	go func() { m.done <- n.Run(ctx) }()
	return m
}

func coordOptions(name string, tm timing, extra ...channelmgr.Option) []channelmgr.Option {
	return append([]channelmgr.Option{
		channelmgr.WithID(name), channelmgr.WithSessionTTL(tm.ttl), channelmgr.WithNodeTTL(tm.ttl),
		channelmgr.WithCheckInterval(tm.check), channelmgr.WithWatchTimeout(tm.opTimeout),
		channelmgr.WithReleaseTimeout(tm.opTimeout), channelmgr.WithBackoff(tm.check, 10*tm.check),
	}, extra...)
}

func startCoord(t testing.TB, name string, b kv.Backend, closeFn func(), tm timing, extra ...channelmgr.Option) *member {
	t.Helper()
	c, err := channelmgr.New(b, coordOptions(name, tm, extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	m := &member{name: name, b: b, closeFn: closeFn, done: make(chan error, 1), coord: c}
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	go func() { m.done <- c.Run(ctx) }()
	return m
}

// storeView is what the store says about the protocol.
type storeView struct {
	rev        int64
	registered map[string]bool
	live       map[int64]bool
	keys       map[string][]string // channel -> assignment keys
	watchedOn  map[string]int64    // channel -> node whose key says Watched
	byNode     map[int64][]string  // node -> channels Watched on it
}

func readView(ctx context.Context, b kv.KV) (*storeView, error) {
	items, rev, err := b.List(ctx, "")
	if err != nil {
		return nil, err
	}
	v := &storeView{rev: rev, registered: map[string]bool{}, live: map[int64]bool{}, keys: map[string][]string{},
		watchedOn: map[string]int64{}, byNode: map[int64][]string{}}
	for _, it := range items {
		switch {
		case strings.HasPrefix(it.Key, meta.RegistryPrefix):
			if ch, err := meta.ParseRegistryKey(it.Key); err == nil {
				v.registered[ch] = true
			}
		case strings.HasPrefix(it.Key, meta.NodeSessionPrefix):
			if id, err := meta.ParseNodeSessionKey(it.Key); err == nil {
				v.live[id] = true
			}
		case strings.HasPrefix(it.Key, meta.ChannelPrefix):
			id, ch, err := meta.ParseChannelKey(it.Key)
			if err != nil {
				continue
			}
			v.keys[ch] = append(v.keys[ch], it.Key)
			info, err := meta.DecodeChannelInfo(it.Key, it.Value)
			if err == nil && info.State == meta.Watched && id != 0 {
				v.watchedOn[ch] = id
				v.byNode[id] = append(v.byNode[id], ch)
			}
		}
	}
	for _, chs := range v.byNode {
		sort.Strings(chs)
	}
	return v, nil
}

// convergence says why the protocol has not converged ("" when it has):
// every registered channel has exactly one assignment key, Watched on a live
// node, and no other key; every live node's local view (Running) equals its
// Watched keys; the ledger shows each registered channel running on exactly
// the node that holds it and nothing else running.
func convergence(ctx context.Context, b kv.KV, nodes []*member, l *ledger) (string, *storeView) {
	v, err := readView(ctx, b)
	if err != nil {
		return err.Error(), nil
	}
	for ch := range v.registered {
		if len(v.keys[ch]) != 1 {
			return fmt.Sprintf("channel %s has keys %v", ch, v.keys[ch]), v
		}
		id, ok := v.watchedOn[ch]
		if !ok || !v.live[id] {
			return fmt.Sprintf("channel %s not Watched on a live node (%v)", ch, v.keys[ch]), v
		}
	}
	for ch, keys := range v.keys {
		if !v.registered[ch] {
			return fmt.Sprintf("deregistered channel %s still has %v", ch, keys), v
		}
	}
	for _, n := range nodes {
		id := n.node.ID()
		if !v.live[id] {
			return fmt.Sprintf("node %s (id %d) has no session", n.name, id), v
		}
		if got, want := n.node.Running(), v.byNode[id]; !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
			return fmt.Sprintf("node %s (id %d) runs %v, the store says %v", n.name, id, got, want), v
		}
	}
	if l != nil {
		run := l.runningOn()
		ids := l.runningIDs()
		for ch := range v.registered {
			owners := run[ch]
			if len(owners) != 1 || ids[ch] != v.watchedOn[ch] {
				return fmt.Sprintf("channel %s runs on %v (id %d), the store says node %d", ch, owners, ids[ch], v.watchedOn[ch]), v
			}
		}
		for ch, owners := range run {
			if !v.registered[ch] && len(owners) > 0 {
				return fmt.Sprintf("deregistered channel %s still runs on %v", ch, owners), v
			}
		}
	}
	return "", v
}

// awaitConvergence waits for convergence and records the time it took in
// TTLs; a timeout records every registered channel not Watched as lost.
func awaitConvergence(t testing.TB, r *report, b kv.KV, nodes []*member, l *ledger, ttl, within time.Duration, since time.Time) {
	t.Helper()
	start := since
	ctx := testCtx(t)
	var why string
	var v *storeView
	if poll(liveWithin(within), func() bool {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		why, v = convergence(cctx, b, nodes, l)
		return why == ""
	}) {
		r.reconverged(time.Since(start), ttl)
		return
	}
	if v != nil {
		lost := 0
		for ch := range v.registered {
			if _, ok := v.watchedOn[ch]; !ok {
				lost++
			}
		}
		r.addLost(lost)
	}
	t.Fatalf("no convergence within %v (%v promised, with load slack): %s", liveWithin(within), within, why)
}

func registerChannels(t testing.TB, b kv.KV, names ...string) {
	t.Helper()
	for _, ch := range names {
		retryIdempotent(t, "register "+ch, channelmgr.ErrAlreadyRegistered, func(ctx context.Context) error {
			return channelmgr.Register(ctx, b, meta.ChannelSpec{Name: ch, CollectionID: int64(len(ch))})
		})
	}
}

// retryIdempotent runs one of a test's own writes, retrying what a store
// with faults in flight answers (an unknown outcome when a raft leader is
// killed under a forwarded txn, no leader for a moment) for up to 30 s.
// done after an unknown outcome means the earlier attempt landed (already
// registered counts as success always, as before). A write of the test is
// not what these tests check.
func retryIdempotent(t testing.TB, what string, done error, f func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	unknown := false
	for {
		actx, acancel := context.WithTimeout(ctx, 10*time.Second)
		err := f(actx)
		acancel()
		switch {
		case err == nil, errors.Is(err, done) && (unknown || done == channelmgr.ErrAlreadyRegistered):
			return
		case (errors.Is(err, kv.ErrUnknownOutcome) || errors.Is(err, kv.ErrUnavailable) ||
			errors.Is(err, context.DeadlineExceeded)) && ctx.Err() == nil:
			unknown = unknown || !errors.Is(err, kv.ErrUnavailable)
			t.Logf("%s: %v; retrying", what, err)
			timer := time.NewTimer(100 * time.Millisecond)
			select {
			case <-timer.C:
			case <-ctx.Done():
				timer.Stop()
			}
		default:
			t.Fatalf("%s: %v", what, err)
		}
	}
}

func channelNames(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%03d", prefix, i)
	}
	return out
}
