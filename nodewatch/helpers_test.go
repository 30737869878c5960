package nodewatch_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/memkv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/nodewatch"
	"github.com/jonboulle/clockwork"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitFor bounds every wait, in real time; sized for a loaded machine
// (make test-load), where the waits are liveness waits only.
const waitFor = 30 * time.Second

// eventually polls cond until it holds or timeout passes (real time).
func eventually(t testing.TB, cond func() bool, timeout time.Duration, msg string, args ...any) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for: %s", timeout, fmt.Sprintf(msg, args...))
		case <-tick.C:
		}
	}
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitFor)
	t.Cleanup(cancel)
	return ctx
}

// handler records every call and checks the Handler contract: never two
// calls at once for one channel, one Release after every Watch.
type handler struct {
	t testing.TB

	mu       sync.Mutex
	busy     map[string]bool // a call is in progress
	held     map[string]bool // watched, not released
	ctxs     map[string]context.Context
	infos    map[string][]meta.ChannelInfo
	releases map[string]int
	log      []string

	// Optional behaviour, set before the node runs.
	watch   func(ctx context.Context, info meta.ChannelInfo) error
	release func(ctx context.Context, channel string) error
}

func newHandler(t testing.TB) *handler {
	return &handler{
		t:        t,
		busy:     map[string]bool{},
		held:     map[string]bool{},
		ctxs:     map[string]context.Context{},
		infos:    map[string][]meta.ChannelInfo{},
		releases: map[string]int{},
	}
}

func (h *handler) enter(ch, what string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.busy[ch] {
		h.t.Errorf("%s(%s) while another call on it runs", what, ch)
	}
	h.busy[ch] = true
	h.log = append(h.log, what+" "+ch)
}

func (h *handler) Watch(ctx context.Context, info meta.ChannelInfo) error {
	h.enter(info.Name, "watch")
	h.mu.Lock()
	if h.held[info.Name] {
		h.t.Errorf("Watch(%s) before the previous Watch was released", info.Name)
	}
	h.held[info.Name] = true
	h.ctxs[info.Name] = ctx
	h.infos[info.Name] = append(h.infos[info.Name], info)
	f := h.watch
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		h.busy[info.Name] = false
		h.mu.Unlock()
	}()
	if f != nil {
		return f(ctx, info)
	}
	return nil
}

func (h *handler) Release(ctx context.Context, ch string) error {
	h.enter(ch, "release")
	h.mu.Lock()
	if !h.held[ch] {
		h.t.Errorf("Release(%s) without a Watch", ch)
	}
	f := h.release
	h.mu.Unlock()
	var err error
	returned := false // false while panicking
	defer func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.busy[ch] = false
		h.releases[ch]++
		if err == nil && returned {
			h.held[ch] = false
		}
	}()
	if f != nil {
		err = f(ctx, ch)
	}
	returned = true
	return err
}

func (h *handler) watches(ch string) []meta.ChannelInfo {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]meta.ChannelInfo(nil), h.infos[ch]...)
}

func (h *handler) released(ch string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.releases[ch]
}

func (h *handler) isHeld(ch string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.held[ch]
}

func (h *handler) ctx(ch string) context.Context {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ctxs[ch]
}

func (h *handler) calls() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.log...)
}

// env is a store on a fake clock, with the node on its own client handle
// (so faults hit only the node) and the test acting as the coordinator on
// the root handle.
type env struct {
	t      *testing.T
	store  *memkv.KV
	client *memkv.KV
	clock  *clockwork.FakeClock
	h      *handler
	node   *nodewatch.Node
	cancel context.CancelFunc
	runErr chan error
}

// Long enough that no session timer fires unless a test advances for it.
const longTTL = time.Hour

const progressEvery = 5 * time.Second

func newEnv(t *testing.T, opts ...nodewatch.Option) *env {
	t.Helper()
	clock := clockwork.NewFakeClock()
	store := memkv.New(memkv.WithClock(clock))
	e := &env{t: t, store: store, client: store.NewClient(), clock: clock, h: newHandler(t)}
	t.Cleanup(func() { _ = store.Close() })
	base := []nodewatch.Option{
		nodewatch.WithClock(clock),
		nodewatch.WithSessionTTL(longTTL),
		nodewatch.WithProgressInterval(progressEvery),
		nodewatch.WithAddr("10.0.0.7:21124"),
	}
	n, err := nodewatch.New(e.client, e.h, append(base, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	e.node = n
	return e
}

// start runs the node and waits for its first registration.
func (e *env) start() int64 {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	e.runErr = make(chan error, 1)
	go func() { e.runErr <- e.node.Run(ctx) }()
	e.t.Cleanup(func() { e.stop() })
	eventually(e.t, func() bool { return e.node.ID() != 0 }, waitFor, "node registers")
	return e.node.ID()
}

// stop cancels Run and waits for it to return nil.
func (e *env) stop() {
	e.t.Helper()
	if e.cancel == nil {
		return
	}
	e.cancel()
	e.cancel = nil
	select {
	case err := <-e.runErr:
		if err != nil {
			e.t.Errorf("Run returned %v", err)
		}
	case <-time.After(waitFor):
		e.t.Fatal("Run did not return after cancel")
	}
}

func (e *env) ctx() context.Context { return testCtx(e.t) }

// put writes an assignment as the coordinator would and returns its revision.
func (e *env) put(node int64, info meta.ChannelInfo) int64 {
	e.t.Helper()
	if info.CollectionID == 0 {
		info.CollectionID = 100
	}
	val, err := meta.EncodeChannelInfo(info)
	if err != nil {
		e.t.Fatal(err)
	}
	rev, err := kv.Put(e.ctx(), e.store, meta.ChannelKey(node, info.Name), val)
	if err != nil {
		e.t.Fatal(err)
	}
	return rev
}

func (e *env) assign(node int64, ch string) int64 {
	return e.put(node, meta.ChannelInfo{Name: ch, State: meta.ToWatch, StartTime: e.clock.Now(), Vchannel: []byte(`{"seek":1}`)})
}

// toRelease rewrites an assignment to ToRelease, keeping its value.
func (e *env) toRelease(node int64, ch string) int64 {
	e.t.Helper()
	info, _ := e.get(node, ch)
	info.State = meta.ToRelease
	return e.put(node, info)
}

func (e *env) get(node int64, ch string) (meta.ChannelInfo, kv.KeyValue) {
	e.t.Helper()
	got, _, err := e.store.Get(e.ctx(), meta.ChannelKey(node, ch))
	if err != nil {
		e.t.Fatalf("get %s: %v", meta.ChannelKey(node, ch), err)
	}
	info, err := meta.DecodeChannelInfo(got.Key, got.Value)
	if err != nil {
		e.t.Fatal(err)
	}
	return info, got
}

// waitState waits for the key to reach state and returns it.
func (e *env) waitState(node int64, ch string, state meta.State) (meta.ChannelInfo, kv.KeyValue) {
	e.t.Helper()
	var info meta.ChannelInfo
	var got kv.KeyValue
	eventually(e.t, func() bool {
		g, _, err := e.store.Get(e.ctx(), meta.ChannelKey(node, ch))
		if err != nil {
			return false
		}
		i, err := meta.DecodeChannelInfo(g.Key, g.Value)
		info, got = i, g
		return err == nil && i.State == state
	}, waitFor, "%s on node %d reaches %v (now %v)", ch, node, state, func() meta.State { return info.State }())
	return info, got
}

func (e *env) del(node int64, ch string) {
	e.t.Helper()
	if _, _, err := kv.Delete(e.ctx(), e.store, meta.ChannelKey(node, ch)); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) running(want ...string) {
	e.t.Helper()
	eventually(e.t, func() bool { return fmt.Sprint(e.node.Running()) == fmt.Sprint(want) }, waitFor,
		"Running() == %v", want)
}

// gate is a Watch that blocks until opened (or its ctx ends).
type gate struct {
	started chan string
	open    chan struct{}
}

func newGate() *gate { return &gate{started: make(chan string, 16), open: make(chan struct{})} }

func (g *gate) watch(ctx context.Context, info meta.ChannelInfo) error {
	g.started <- info.Name
	select {
	case <-g.open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// progressing is g's Watch that also reports progress every second of
// clock while it waits: a slow Watch that is not stuck.
func (g *gate) progressing(clock clockwork.Clock) func(ctx context.Context, info meta.ChannelInfo) error {
	return func(ctx context.Context, info meta.ChannelInfo) error {
		tick := clock.NewTicker(time.Second)
		defer tick.Stop()
		g.started <- info.Name
		for {
			select {
			case <-g.open:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			case <-tick.Chan():
				nodewatch.ReportProgress(ctx)
			}
		}
	}
}

func (g *gate) waitStarted(t testing.TB, ch string) {
	t.Helper()
	select {
	case got := <-g.started:
		if got != ch {
			t.Fatalf("Watch started for %s, want %s", got, ch)
		}
	case <-time.After(waitFor):
		t.Fatalf("Watch(%s) never started", ch)
	}
}

var errBoom = errors.New("boom")
