package channelmgr

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/memkv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/session"
	"github.com/jonboulle/clockwork"
	"go.uber.org/zap/zaptest"
)

// Test timing: everything runs on a fake clock; real time only bounds how
// long a test waits for goroutines to react.
const (
	waitFor  = 30 * time.Second // real-time deadline of eventually, sized for a loaded machine (make test-load)
	nodeTTL  = 10 * time.Second
	step     = time.Second // = the coordinators' check interval
	coordTTL = time.Hour   // coordinators never fence by accident
)

// harness is one memkv store on a fake clock, coordinators on it, and fake
// nodes that keep their leases alive only when the harness advances time.
type harness struct {
	t   *testing.T
	clk *clockwork.FakeClock
	kv  *memkv.KV
	ctx context.Context

	mu      sync.Mutex
	nodes   []*fakeNode
	running map[string]int64 // channel -> node that runs it (invariant 2)
	errs    []string
}

func newHarness(t *testing.T, opts ...memkv.Option) *harness {
	t.Helper()
	clk := clockwork.NewFakeClock()
	m := memkv.New(append([]memkv.Option{memkv.WithClock(clk)}, opts...)...)
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{t: t, clk: clk, kv: m, ctx: ctx, running: map[string]int64{}}
	t.Cleanup(func() {
		cancel()
		h.mu.Lock()
		nodes := slices.Clone(h.nodes)
		h.mu.Unlock()
		for _, n := range nodes {
			n.stop()
		}
		m.Close()
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, e := range h.errs {
			t.Error(e)
		}
	})
	return h
}

func (h *harness) fail(format string, args ...any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.errs = append(h.errs, fmt.Sprintf(format, args...))
}

// eventually polls cond until it holds or the real-time deadline passes.
func (h *harness) eventually(what string, cond func() bool) {
	h.t.Helper()
	h.eventuallyFor(waitFor, what, cond)
}

func (h *harness) eventuallyFor(d time.Duration, what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			h.t.Fatalf("timed out waiting for %s\nstate:\n%s\ngoroutines:\n%s", what, h.dump(), buf)
		}
		<-tick.C
	}
}

// coord is a running Coordinator.
type coord struct {
	*Coordinator
	h        *harness
	cancel   context.CancelFunc
	done     chan error
	lastPass atomic.Int64 // clock time (UnixNano) of the last finished pass
	lastRev  atomic.Int64 // the view's revision at that pass
	b        kv.Backend
}

func (h *harness) coordOptions(extra ...Option) []Option {
	return append([]Option{
		WithClock(h.clk), WithSessionTTL(coordTTL), WithNodeTTL(nodeTTL), WithCheckInterval(step),
		WithWatchTimeout(30 * time.Second), WithReleaseTimeout(30 * time.Second),
		WithBackoff(2*time.Second, 8*time.Second), WithLogger(zaptest.NewLogger(h.t)),
	}, extra...)
}

// startCoord runs a coordinator on its own handle (b nil: a new client).
func (h *harness) startCoord(b kv.Backend, opts ...Option) *coord {
	h.t.Helper()
	if b == nil {
		b = h.kv.NewClient()
	}
	c, err := New(b, h.coordOptions(opts...)...)
	if err != nil {
		h.t.Fatal(err)
	}
	rc := &coord{Coordinator: c, h: h, done: make(chan error, 1), b: b}
	c.onPass = func(now time.Time, rev int64) {
		rc.lastRev.Store(rev)
		rc.lastPass.Store(now.UnixNano())
	}
	ctx, cancel := context.WithCancel(h.ctx)
	rc.cancel = cancel
	go func() { rc.done <- c.Run(ctx) }()
	h.t.Cleanup(rc.stop)
	return rc
}

// lead starts a coordinator and waits until it leads and has made a pass.
func (h *harness) lead(opts ...Option) *coord {
	h.t.Helper()
	c := h.startCoord(nil, opts...)
	h.eventually("coordinator leads", func() bool { return c.IsLeader() && c.lastPass.Load() != 0 })
	return c
}

func (c *coord) stop() {
	c.cancel()
	select {
	case err := <-c.done:
		if err != nil {
			c.h.fail("coordinator Run returned %v", err)
		}
		c.done <- nil
	case <-time.After(waitFor):
		c.h.fail("coordinator Run did not return")
	}
}

// advance moves the clock by d in check-interval steps. At each step live
// nodes renew their leases, and the leading coordinators get to run a pass
// at the new time before the next step.
func (h *harness) advance(d time.Duration, leaders ...*coord) {
	h.t.Helper()
	for d > 0 {
		s := min(step, d)
		d -= s
		h.keepAlive()
		h.clk.Advance(s)
		now := h.clk.Now().UnixNano()
		for _, c := range leaders {
			h.eventually("a pass at the new time", func() bool { return c.lastPass.Load() >= now || !c.IsLeader() })
		}
	}
}

// expireAndFence advances until the session key of crashed node dead is
// gone, checks that none of its channels moves during the node TTL that
// follows (a lease that vanished proves nothing about when the node
// stopped), then advances past that TTL.
func (h *harness) expireAndFence(dead int64, leaders ...*coord) {
	h.t.Helper()
	for i := 0; ; i++ {
		if _, _, err := h.kv.Get(h.ctx, meta.NodeSessionKey(dead)); errors.Is(err, kv.ErrKeyNotFound) {
			break
		}
		if i > int(2*nodeTTL/step) {
			h.t.Fatalf("node %d's session key outlived its lease\n%s", dead, h.dump())
		}
		h.advance(step, leaders...)
	}
	held := h.counts()[dead]
	h.advance(nodeTTL-step, leaders...)
	if got := h.counts()[dead]; got != held {
		h.t.Fatalf("node %d: %d channels moved away less than one node TTL after its lease vanished (%d left)\n%s",
			dead, held-got, got, h.dump())
	}
	h.advance(2*step, leaders...)
}

func (h *harness) keepAlive() {
	h.mu.Lock()
	nodes := slices.Clone(h.nodes)
	h.mu.Unlock()
	for _, n := range nodes {
		n.keepAlive()
	}
}

// register registers channels name..., in collection coll.
func (h *harness) register(coll int64, names ...string) {
	h.t.Helper()
	for _, n := range names {
		if err := Register(h.ctx, h.kv, meta.ChannelSpec{Name: n, CollectionID: coll}); err != nil {
			h.t.Fatal(err)
		}
	}
}

func names(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%03d", prefix, i)
	}
	return out
}

// assignment is one key under channel/ as stored.
type assignment struct {
	node    int64
	info    meta.ChannelInfo
	modRev  int64
	corrupt bool
}

// assignments lists channel/ and checks invariant 1 (one key per channel).
func (h *harness) assignments() map[string]assignment {
	h.t.Helper()
	kvs, _, err := h.kv.List(h.ctx, meta.ChannelPrefix)
	if err != nil {
		h.t.Fatal(err)
	}
	out := map[string]assignment{}
	for _, e := range kvs {
		node, ch, err := meta.ParseChannelKey(e.Key)
		if err != nil {
			continue
		}
		a := assignment{node: node, modRev: e.ModRevision}
		if info, err := meta.DecodeChannelInfo(e.Key, e.Value); err != nil {
			a.corrupt = true
		} else {
			a.info = info
		}
		if prev, dup := out[ch]; dup {
			h.t.Fatalf("invariant 1: channel %s has keys on node %d and node %d", ch, prev.node, node)
		}
		out[ch] = a
	}
	return out
}

// allWatched reports whether every channel in chs is Watched on a node
// (optionally restricted to nodes).
func (h *harness) allWatched(chs []string, nodes ...int64) bool {
	as := h.assignments()
	for _, ch := range chs {
		a, ok := as[ch]
		if !ok || a.node == 0 || a.info.State != meta.Watched {
			return false
		}
		if len(nodes) > 0 && !slices.Contains(nodes, a.node) {
			return false
		}
	}
	return true
}

func (h *harness) counts() map[int64]int {
	out := map[int64]int{}
	for _, a := range h.assignments() {
		out[a.node]++
	}
	return out
}

func (h *harness) dump() string {
	if h.kv == nil {
		return "(not memkv)"
	}
	kvs, rev, err := h.kv.List(context.Background(), "")
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "revision %d, clock %v\n", rev, h.clk.Now().Format(time.TimeOnly))
	for i, e := range kvs {
		if i == 60 {
			fmt.Fprintf(&b, "... %d more keys\n", len(kvs)-i)
			break
		}
		fmt.Fprintf(&b, "  %s @%d lease=%d %s\n", e.Key, e.ModRevision, e.Lease, e.Value)
	}
	return b.String()
}

// fakeNode is a node that acks the protocol directly with meta, with knobs
// for misbehaviour. It keeps its lease alive only in harness.advance.
type fakeNode struct {
	h      *harness
	id     int64
	lease  kv.LeaseID
	b      *memkv.KV
	cancel context.CancelFunc
	done   chan struct{}

	mu         sync.Mutex
	dead       bool            // crashed or fenced: no acks, no keep-alive
	frozen     bool            // no keep-alive (its lease will expire)
	failWatch  map[string]bool // answer WatchFailure
	failAll    bool            // answer WatchFailure for every channel
	ignoreWat  bool            // never answer ToWatch
	ignoreRel  bool            // never answer ToRelease
	running    map[string]bool
	watchCount map[string]int
}

// addNode registers a serving node with a fresh ID and starts its loop.
func (h *harness) addNode() *fakeNode {
	h.t.Helper()
	return h.addNodes(1)[0]
}

// addNodes registers n nodes whose session keys appear in one txn, so the
// coordinator sees them join together.
func (h *harness) addNodes(n int) []*fakeNode {
	h.t.Helper()
	var ops []kv.Op
	var out []*fakeNode
	for i := 0; i < n; i++ {
		b := h.kv.NewClient()
		lease, err := b.Grant(h.ctx, nodeTTL)
		if err != nil {
			h.t.Fatal(err)
		}
		id, err := session.AllocateNodeID(h.ctx, b)
		if err != nil {
			h.t.Fatal(err)
		}
		val, err := meta.EncodeNodeSession(meta.NodeSession{ID: id, State: meta.NodeServing, TTL: nodeTTL, StartTime: h.clk.Now()})
		if err != nil {
			h.t.Fatal(err)
		}
		ops = append(ops, kv.OpPutLease(meta.NodeSessionKey(id), val, lease))
		out = append(out, &fakeNode{h: h, id: id, lease: lease, b: b, done: make(chan struct{}),
			failWatch: map[string]bool{}, running: map[string]bool{}, watchCount: map[string]int{}})
	}
	kvs, rev, err := h.kv.List(h.ctx, meta.ChannelPrefix)
	if err != nil || len(kvs) < 0 {
		h.t.Fatal(err)
	}
	for _, fn := range out {
		ctx, cancel := context.WithCancel(h.ctx)
		fn.cancel = cancel
		go fn.loop(ctx, fn.b.Watch(ctx, meta.NodePrefix(fn.id), rev+1))
	}
	if _, err := h.kv.Txn(h.ctx, kv.Txn{Then: ops}); err != nil {
		h.t.Fatal(err)
	}
	h.mu.Lock()
	h.nodes = append(h.nodes, out...)
	h.mu.Unlock()
	return out
}

func (n *fakeNode) stop() {
	n.cancel()
	<-n.done
	n.b.Close()
}

// crash stops the node as a killed process: it stops running everything
// at once and its lease expires one TTL later.
func (n *fakeNode) crash() {
	n.mu.Lock()
	n.dead = true
	n.frozen = true
	chs := n.runningLocked()
	n.running = map[string]bool{}
	n.mu.Unlock()
	for _, ch := range chs {
		n.h.stopped(n.id, ch)
	}
}

func (n *fakeNode) runningLocked() []string {
	var out []string
	for ch := range n.running {
		out = append(out, ch)
	}
	sort.Strings(out)
	return out
}

func (n *fakeNode) set(f func(n *fakeNode)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	f(n)
}

func (n *fakeNode) keepAlive() {
	n.mu.Lock()
	skip := n.frozen
	n.mu.Unlock()
	if skip {
		return
	}
	if _, err := n.b.KeepAliveOnce(n.h.ctx, n.lease); err != nil && errors.Is(err, kv.ErrLeaseNotFound) {
		// Lease gone (evicted): self-fence, as nodewatch does.
		n.crash()
	}
}

// setStopping marks the node stopping (graceful drain).
func (n *fakeNode) setStopping() {
	n.h.t.Helper()
	if err := session.Drain(n.h.ctx, n.h.kv, n.id); err != nil {
		n.h.t.Fatal(err)
	}
}

// started/stopped check invariant 2: one node runs a channel at a time.
func (h *harness) started(node int64, ch string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if other, ok := h.running[ch]; ok && other != node {
		h.errs = append(h.errs, fmt.Sprintf("invariant 2: channel %s started on node %d while node %d runs it", ch, node, other))
	}
	h.running[ch] = node
}

func (h *harness) stopped(node int64, ch string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.running[ch] == node {
		delete(h.running, ch)
	}
}

func (n *fakeNode) loop(ctx context.Context, wch kv.WatchChan) {
	defer close(n.done)
	for wch != nil {
		next := kv.WatchChan(nil)
		for resp := range wch {
			if resp.Err != nil {
				if !errors.Is(resp.Err, kv.ErrCompacted) {
					return
				}
				// Re-list and handle what is there, as nodewatch does.
				kvs, rev, err := n.b.List(ctx, meta.NodePrefix(n.id))
				if err != nil {
					return
				}
				for _, e := range kvs {
					n.handle(ctx, kv.Event{Type: kv.EventPut, KV: e})
				}
				next = n.b.Watch(ctx, meta.NodePrefix(n.id), rev+1)
				break
			}
			for _, ev := range resp.Events {
				n.handle(ctx, ev)
			}
		}
		wch = next
	}
}

func (n *fakeNode) handle(ctx context.Context, ev kv.Event) {
	_, ch, err := meta.ParseChannelKey(ev.KV.Key)
	if err != nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.dead {
		return
	}
	if ev.Type == kv.EventDelete {
		if n.running[ch] {
			delete(n.running, ch)
			n.h.stopped(n.id, ch)
		}
		return
	}
	info, err := meta.DecodeChannelInfo(ev.KV.Key, ev.KV.Value)
	if err != nil {
		return
	}
	ack := func(info meta.ChannelInfo) bool {
		val, err := meta.EncodeChannelInfo(info)
		if err != nil {
			n.h.fail("node %d: encode: %v", n.id, err)
			return false
		}
		resp, err := n.b.Txn(ctx, kv.Txn{
			If:   []kv.Cmp{kv.CmpModRevision(ev.KV.Key, kv.Equal, ev.KV.ModRevision)},
			Then: []kv.Op{kv.OpPut(ev.KV.Key, val)},
		})
		return err == nil && resp.Succeeded
	}
	switch info.State {
	case meta.ToWatch:
		if n.ignoreWat {
			return
		}
		n.watchCount[ch]++
		info.AssignRevision = ev.KV.ModRevision
		if n.failWatch[ch] || n.failAll {
			info.State, info.LastError, info.FailedNode = meta.WatchFailure, "injected failure", n.id
			ack(info)
			return
		}
		n.h.started(n.id, ch)
		n.running[ch] = true
		info.State = meta.Watched
		if !ack(info) {
			delete(n.running, ch)
			n.h.stopped(n.id, ch)
		}
	case meta.ToRelease:
		if n.ignoreRel {
			return
		}
		if n.running[ch] {
			delete(n.running, ch)
			n.h.stopped(n.id, ch)
		}
		info.State = meta.Released
		ack(info)
	}
}

// bumpProgress rewrites a ToWatch with Progress+1, as a node does while a
// long Watch runs.
// bumpProgress bumps ch's Progress and returns the revision of the write.
func (n *fakeNode) bumpProgress(ch string) int64 {
	n.h.t.Helper()
	key := meta.ChannelKey(n.id, ch)
	e, _, err := n.b.Get(n.h.ctx, key)
	if err != nil {
		n.h.t.Fatal(err)
	}
	info, err := meta.DecodeChannelInfo(key, e.Value)
	if err != nil {
		n.h.t.Fatal(err)
	}
	info.Progress++
	val, _ := meta.EncodeChannelInfo(info)
	resp, err := n.b.Txn(n.h.ctx, kv.Txn{
		If:   []kv.Cmp{kv.CmpModRevision(key, kv.Equal, e.ModRevision)},
		Then: []kv.Op{kv.OpPut(key, val)},
	})
	if err != nil || !resp.Succeeded {
		n.h.t.Fatalf("progress bump: %v %v", resp.Succeeded, err)
	}
	return resp.Revision
}

// events returns the events under prefix with revisions in (from, to].
func (h *harness) events(prefix string, from, to int64) []kv.Event {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.ctx, waitFor)
	defer cancel()
	var out []kv.Event
	if to <= from {
		return nil
	}
	for resp := range h.kv.Watch(ctx, prefix, from+1) {
		if resp.Err != nil {
			h.t.Fatal(resp.Err)
		}
		for _, ev := range resp.Events {
			if ev.Revision() > to {
				return out
			}
			out = append(out, ev)
			if ev.Revision() == to {
				return out
			}
		}
	}
	h.t.Fatalf("watch of %s ended before revision %d", prefix, to)
	return nil
}

// lastChannelRev is the highest mod revision under channel/.
func (h *harness) lastChannelRev() int64 {
	var rev int64
	kvs, _, err := h.kv.List(h.ctx, meta.ChannelPrefix)
	if err != nil {
		h.t.Fatal(err)
	}
	for _, e := range kvs {
		rev = max(rev, e.ModRevision)
	}
	return rev
}

func (h *harness) rev() int64 {
	_, rev, err := h.kv.List(h.ctx, meta.ControlPrefix)
	if err != nil {
		h.t.Fatal(err)
	}
	return rev
}

// putInfo writes an assignment directly, as a state left by a crash.
func (h *harness) putInfo(node int64, info meta.ChannelInfo) {
	h.t.Helper()
	val, err := meta.EncodeChannelInfo(info)
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := kv.Put(h.ctx, h.kv, meta.ChannelKey(node, info.Name), val); err != nil {
		h.t.Fatal(err)
	}
}
