package conformance

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/chanwatch/chanwatch/channelmgr"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/nodewatch"
)

// mepTiming holds every duration a scenario gives the components, and how
// the suite drives and bounds time.
type mepTiming struct {
	nodeTTL, coordTTL           time.Duration
	watchTimeout, releaseTimout time.Duration
	check, progress             time.Duration
	backoffBase, backoffMax     time.Duration
	// step is how far the fake clock moves at a time (0 on a real clock).
	step time.Duration
	// tolerance is how much earlier than one TTL after a session's end a
	// new owner may start (the suite observes the end a little late).
	tolerance time.Duration
	// wait bounds, in real time, how long a wait for a condition may go
	// without progress (see waitFor).
	wait time.Duration
}

// On a fake clock durations are free, so they are the production-like
// defaults scaled down a little; step is well under every margin (the fence
// margin is TTL/5 = 2 s) so no deadline is jumped over.
func fakeTiming() mepTiming {
	return mepTiming{
		nodeTTL: 10 * time.Second, coordTTL: 10 * time.Second,
		watchTimeout: 30 * time.Second, releaseTimout: 30 * time.Second,
		check: time.Second, progress: 5 * time.Second,
		backoffBase: time.Second, backoffMax: 8 * time.Second,
		step: 250 * time.Millisecond, tolerance: 250 * time.Millisecond,
		wait: 60 * time.Second,
	}
}

// On a real clock (etcd) TTLs are short, so that expiries and timeouts
// cost seconds, and long enough not to expire under -race on 2 cores.
func realTiming() mepTiming {
	return mepTiming{
		nodeTTL: 2 * time.Second, coordTTL: 2 * time.Second,
		watchTimeout: 3 * time.Second, releaseTimout: 3 * time.Second,
		check: 100 * time.Millisecond, progress: 500 * time.Millisecond,
		backoffBase: 200 * time.Millisecond, backoffMax: time.Second,
		tolerance: 500 * time.Millisecond,
		wait:      60 * time.Second,
	}
}

// The fake clock moves one step once the store has been quiet for
// mepQuietPolls polls mepPoll apart.
const (
	mepPoll       = 2 * time.Millisecond
	mepQuietPolls = 3
)

// mep is one scenario's cluster: the suite's own handle, the Checker and
// Recorder, and the simulated processes.
type mep struct {
	t     *testing.T
	env   Env
	ctx   context.Context
	clock clockwork.Clock
	fake  *clockwork.FakeClock // nil on a real clock
	tm    mepTiming
	b     kv.Backend // the suite's handle: registry API, direct writes
	rec   *Recorder
	chk   *Checker
	log   *zap.Logger
	logs  *logRing

	stopChecker context.CancelFunc
	checkerDone chan error

	mu        sync.Mutex
	nowhere   map[string]time.Time // see checkRunning
	nodes     []*mepNode
	coords    []*mepCoord
	nextNode  int
	nextCoord int
}

func newMEP(t *testing.T, env Env) *mep {
	// No overall deadline beyond the test's: every wait is bounded (see
	// waitFor), and RandomizedChurn may run for thousands of rounds.
	m := &mep{t: t, env: env, ctx: t.Context(), logs: newLogRing(400)}
	m.clock = env.Clock
	if m.clock == nil {
		m.clock = clockwork.NewRealClock()
	}
	if fc, ok := m.clock.(*clockwork.FakeClock); ok {
		m.fake, m.tm = fc, fakeTiming()
	} else {
		m.tm = realTiming()
	}
	var sink zapcore.WriteSyncer = zapcore.AddSync(m.logs)
	// CHANWATCH_MEP_LOG=<file> also appends every component's log there.
	if path := os.Getenv("CHANWATCH_MEP_LOG"); path != "" {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatalf("CHANWATCH_MEP_LOG: %v", err)
		}
		t.Cleanup(func() { _ = f.Close() })
		fmt.Fprintf(f, "=== %s\n", t.Name())
		sink = zapcore.NewMultiWriteSyncer(sink, zapcore.Lock(f))
	}
	m.log = zap.New(zapcore.NewCore(
		zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()), sink, zapcore.DebugLevel))
	m.rec = NewRecorder(m.clock, m.tm.tolerance)
	m.chk = NewChecker(env.Open(t), m.rec)
	m.b = env.Open(t)
	ctx, cancel := context.WithCancel(context.Background())
	m.stopChecker, m.checkerDone = cancel, make(chan error, 1)
	go func() { m.checkerDone <- m.chk.Run(ctx) }()
	// Registered after the handles above, so it runs before they close.
	t.Cleanup(m.shutdown)
	if err := m.chk.Sync(m.ctx); err != nil {
		t.Fatalf("checker: %v", err)
	}
	return m
}

// real reports whether the scenario runs on real time (sizes shrink there).
func (m *mep) real() bool { return m.fake == nil }

// size picks a channel count: mem on a fake clock, real on a real one.
func (m *mep) size(mem, real int) int {
	if m.real() {
		return real
	}
	return mem
}

// violations returns what the Checker and Recorder found so far.
func (m *mep) violations() []string {
	m.rec.CheckFenced()
	return append(m.chk.Violations(), m.rec.Violations()...)
}

// requireNoViolations fails the scenario at once on any violation.
func (m *mep) requireNoViolations() {
	m.t.Helper()
	if v := m.violations(); len(v) > 0 {
		m.t.Fatalf("invariant violations:\n\t%s", strings.Join(v, "\n\t"))
	}
}

// fatalf fails the scenario with the current state attached.
func (m *mep) fatalf(format string, args ...any) {
	m.t.Helper()
	m.t.Fatalf("%s\nstate: %s", fmt.Sprintf(format, args...), m.summary())
}

// summary is a short description of the current assignments.
func (m *mep) summary() string {
	v := m.chk.View()
	byNode := make(map[int64]map[meta.State]int)
	for _, a := range v.Assign {
		if byNode[a.NodeID] == nil {
			byNode[a.NodeID] = make(map[meta.State]int)
		}
		byNode[a.NodeID][a.Info.State]++
	}
	ids := make([]int64, 0, len(byNode))
	for id := range byNode {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	var b strings.Builder
	fmt.Fprintf(&b, "rev %d, %d registered, leader %q, live %v;", v.Rev, len(v.Registered), v.Leader, v.Live)
	for _, id := range ids {
		fmt.Fprintf(&b, " node %d: %v;", id, byNode[id])
	}
	return b.String()
}

// waitFor waits until cond returns "" (otherwise it says what is still
// missing), failing the scenario on a violation at once. On a fake clock it
// advances the clock by one step whenever the store has been quiet for a
// few polls: components only act on events and on timers, so a quiet store
// means they are waiting for time to pass.
//
// It is a liveness wait, so it is bounded by progress, not by real time
// alone (a loaded machine runs the same protocol slower): it fails when
// neither the store's revision nor the fake clock has moved for tm.wait, or
// after 3 tm.wait in all; on a fake clock also once mepFakeBudget of fake
// time has passed, the protocol-time bound, which no load changes.
func (m *mep) waitFor(what string, cond func() string) {
	m.t.Helper()
	m.waitForWithin(what, mepFakeBudget, cond)
}

// mepFakeBudget is how much fake time a wait may let pass: far more than
// any expectation of the suite needs (timeouts are 30 s, TTLs 10 s).
const mepFakeBudget = 30 * time.Minute

func (m *mep) waitForWithin(what string, fakeBudget time.Duration, cond func() string) {
	m.t.Helper()
	d := newLiveDeadline(m.tm.wait, 3*m.tm.wait)
	var fakeStart time.Time
	if m.fake != nil {
		fakeStart = m.fake.Now()
	}
	tick := time.NewTicker(mepPoll)
	defer tick.Stop()
	lastRev, quiet := int64(-1), 0
	var heldSince time.Time // when the stepper began holding for a late session
	for {
		m.checkRunning()
		m.requireNoViolations()
		why := cond()
		if why == "" {
			return
		}
		// Progress: the Checker's revision (it follows the store's
		// watch, so reading it costs no request) and the fake clock.
		var fakeNow int64
		if m.fake != nil {
			fakeNow = m.fake.Now().UnixNano()
		}
		now := time.Now()
		d.progress(now, m.chk.Rev(), fakeNow)
		if over := d.expired(now); over != "" {
			m.fatalf("%s: %s: %s", over, what, why)
		}
		if m.fake != nil {
			if passed := m.fake.Since(fakeStart); passed > fakeBudget {
				m.fatalf("not within %v of fake time: %s: %s", fakeBudget, what, why)
			}
			rev := m.storeRev()
			if rev == lastRev && rev == m.chk.Rev() {
				quiet++
			} else {
				lastRev, quiet = rev, 0
			}
			if quiet >= mepQuietPolls {
				// A quiet store does not mean every process has run: a
				// keep-alive moves no revision, and on a loaded machine a
				// session's goroutine can wait longer than many steps
				// take. Hold the clock for a healthy process whose lease
				// is running down, for at most mepHoldMax of real time.
				late := m.lateSession()
				switch {
				case late == "":
					heldSince = time.Time{}
				case heldSince.IsZero():
					heldSince = now
				case now.Sub(heldSince) > mepHoldMax:
					m.t.Logf("fake clock held %v for %s; stepping on", mepHoldMax, late)
					late, heldSince = "", time.Time{}
				}
				if late == "" {
					m.fake.Advance(m.tm.step)
				}
				quiet = 0
			}
		}
		select {
		case <-tick.C:
		case <-m.ctx.Done():
			m.fatalf("scenario context ended: %s: %s", what, why)
		}
	}
}

// mepHoldMax bounds, in real time, how long the fake clock waits for one
// late session (see lateSession) before it moves on regardless.
const mepHoldMax = 10 * time.Second

// lateSession names a process that should be alive and connected (started,
// not crashed, stopped or cut off from the store) whose session lease has
// less than half its TTL left: its keep-alive (every TTL/3) is overdue, so
// its goroutine has not run yet. "" when there is none.
func (m *mep) lateSession() string {
	m.mu.Lock()
	nodes := append([]*mepNode(nil), m.nodes...)
	coords := append([]*mepCoord(nil), m.coords...)
	m.mu.Unlock()
	for _, n := range nodes {
		if n.crashed.Load() || n.stopped.Load() || n.kv.cutOff() || closed(n.done) {
			continue
		}
		if id := n.ID(); id != 0 && m.leaseLow(meta.NodeSessionKey(id), n.ttl) {
			return "node " + n.name
		}
	}
	for _, c := range coords {
		if c.crashed.Load() || c.kv.cutOff() || closed(c.done) || !c.c.IsLeader() {
			continue
		}
		if m.leaseLow(meta.CoordinatorKey, m.tm.coordTTL) {
			return "coordinator " + c.name
		}
	}
	return ""
}

// leaseLow reports whether key's lease has less than ttl/2 left. A key or
// lease that is gone, or a read that fails or takes longer than
// mepLeaseRead, is not low: the wait's own checks report what matters, and
// the stepper must never wait on the store here (a raftkv TimeToLive is a
// linearizable read on the leader, which a loaded machine can hold up).
func (m *mep) leaseLow(key string, ttl time.Duration) bool {
	ctx, cancel := context.WithTimeout(m.ctx, mepLeaseRead)
	defer cancel()
	kvp, _, err := m.b.Get(ctx, key)
	if err != nil || kvp.Lease == 0 {
		return false
	}
	left, err := m.b.TimeToLive(ctx, kvp.Lease)
	return err == nil && left < ttl/2
}

// mepLeaseRead bounds, in real time, lateSession's reads of one lease.
const mepLeaseRead = 500 * time.Millisecond

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// storeRev reads the store's current revision.
func (m *mep) storeRev() int64 {
	_, rev, err := m.b.List(m.ctx, "\x7f-rev/")
	if err != nil {
		m.t.Fatalf("read revision: %v", err)
	}
	return rev
}

// elapse lets d pass: on a fake clock in steps (each after the store went
// quiet), on a real one in real time; violations are checked throughout.
func (m *mep) elapse(d time.Duration) {
	m.t.Helper()
	if m.fake != nil {
		end := m.fake.Now().Add(d)
		m.waitForWithin(fmt.Sprintf("%v of fake time to pass", d), d+m.tm.step, func() string {
			if m.fake.Now().Before(end) {
				return fmt.Sprintf("%v left", end.Sub(m.fake.Now()))
			}
			return ""
		})
		return
	}
	end := time.Now().Add(d)
	m.waitFor(fmt.Sprintf("%v to pass", d), func() string {
		if time.Now().Before(end) {
			return "waiting"
		}
		return ""
	})
}

// sync waits until the Checker has seen everything written so far.
func (m *mep) sync() {
	m.t.Helper()
	if err := m.chk.Sync(m.ctx); err != nil {
		m.t.Fatalf("checker sync: %v", err)
	}
	m.requireNoViolations()
}

// logRing keeps the last lines the components logged, for failure reports.
type logRing struct {
	mu    sync.Mutex
	lines []string
	next  int
	full  bool
}

func newLogRing(n int) *logRing { return &logRing{lines: make([]string, n)} }

func (r *logRing) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines[r.next] = strings.TrimRight(string(p), "\n")
	r.next++
	if r.next == len(r.lines) {
		r.next, r.full = 0, true
	}
	return len(p), nil
}

func (r *logRing) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	if r.full {
		out = append(out, r.lines[r.next:]...)
	}
	out = append(out, r.lines[:r.next]...)
	return strings.Join(out, "\n")
}

var _ nodewatch.Handler = (*RecordingHandler)(nil)

// mepNode is one simulated node process.
type mepNode struct {
	name string
	ttl  time.Duration
	kv   *procKV
	h    *RecordingHandler
	ph   *PreparingHandler // non-nil: the node's handler can prepare (withPreparer)
	n    *nodewatch.Node
	node atomic.Pointer[nodewatch.Node]

	cancel  context.CancelFunc
	done    chan struct{}
	err     error // Run's result, once done is closed
	crashed atomic.Bool
	stopped atomic.Bool
}

// ID returns the node's current ID (0 before it registered).
func (n *mepNode) ID() int64 {
	if nw := n.node.Load(); nw != nil {
		return nw.ID()
	}
	return 0
}

// nodeCfg is how a scenario shapes one node.
type nodeCfg struct {
	ttl        time.Duration
	progress   time.Duration
	maxAttempt time.Duration // 0: nodewatch's default
	script     func(h *RecordingHandler)
	preparer   func(h *PreparingHandler) // see withPreparer
	noWait     bool
	extra      []nodewatch.Option // e.g. capacity and labels (mep_weighted.go)
}

type nodeOpt func(*nodeCfg)

// withProgress sets the node's progress heartbeat interval.
func withProgress(d time.Duration) nodeOpt { return func(c *nodeCfg) { c.progress = d } }

// withMaxAttempt sets the node's cap on one handler call.
func withMaxAttempt(d time.Duration) nodeOpt { return func(c *nodeCfg) { c.maxAttempt = d } }

// withScript scripts the node's handler before it starts.
func withScript(f func(h *RecordingHandler)) nodeOpt { return func(c *nodeCfg) { c.script = f } }

// withPreparer gives the node's handler the Preparer capability (warm
// handoff), scripted by f (nil: Prepare succeeds at once).
func withPreparer(f func(h *PreparingHandler)) nodeOpt {
	return func(c *nodeCfg) {
		c.preparer = func(h *PreparingHandler) {
			if f != nil {
				f(h)
			}
		}
	}
}

// noWait returns from startNode without waiting for the registration.
func noWait() nodeOpt { return func(c *nodeCfg) { c.noWait = true } }

// startNode starts a node process on a fresh handle and, unless noWait,
// waits until its session key is visible.
func (m *mep) startNode(opts ...nodeOpt) *mepNode {
	m.t.Helper()
	cfg := nodeCfg{ttl: m.tm.nodeTTL, progress: m.tm.progress}
	for _, o := range opts {
		o(&cfg)
	}
	m.mu.Lock()
	m.nextNode++
	name := fmt.Sprintf("n%d", m.nextNode)
	m.mu.Unlock()

	mn := &mepNode{name: name, ttl: cfg.ttl, done: make(chan struct{})}
	mn.kv = newProcKV(m.env.Open(m.t), name, roleNode, m.chk)
	mn.h = m.rec.Handler(name, mn.ID)
	if cfg.script != nil {
		cfg.script(mn.h)
	}
	nwOpts := []nodewatch.Option{
		nodewatch.WithSessionTTL(cfg.ttl),
		nodewatch.WithProgressInterval(cfg.progress),
		nodewatch.WithClock(m.clock),
		nodewatch.WithLogger(m.log.Named(name)),
		nodewatch.WithAddr(name),
	}
	if cfg.maxAttempt > 0 {
		nwOpts = append(nwOpts, nodewatch.WithMaxAttempt(cfg.maxAttempt))
	}
	nwOpts = append(nwOpts, cfg.extra...)
	var h nodewatch.Handler = mn.h
	if cfg.preparer != nil {
		mn.ph = mn.h.Preparing()
		cfg.preparer(mn.ph)
		h = mn.ph
	}
	n, err := nodewatch.New(mn.kv, h, nwOpts...)
	if err != nil {
		m.t.Fatalf("nodewatch.New(%s): %v", name, err)
	}
	mn.n = n
	mn.node.Store(n)
	ctx, cancel := context.WithCancel(context.Background())
	mn.cancel = cancel
	go func() {
		defer close(mn.done)
		mn.err = n.Run(ctx)
	}()
	// Registered after the handle's own Close cleanup, so it runs first.
	m.t.Cleanup(func() { m.reap(mn) })
	m.mu.Lock()
	m.nodes = append(m.nodes, mn)
	m.mu.Unlock()
	if !cfg.noWait {
		m.waitRegistered(mn)
	}
	return mn
}

// waitRegistered waits until mn's current ID has a live session key.
func (m *mep) waitRegistered(mn *mepNode) {
	m.t.Helper()
	m.waitFor(mn.name+" to register", func() string {
		id := mn.ID()
		if id == 0 {
			return "no ID yet"
		}
		if _, ok := m.chk.View().Live[id]; !ok {
			return fmt.Sprintf("node %d has no session key yet", id)
		}
		return ""
	})
}

// reap stops a process at the end of the scenario: unblock its handler,
// heal its handle, cancel it and wait for Run to return.
func (m *mep) reap(mn *mepNode) {
	mn.h.UnblockAll()
	mn.kv.Heal()
	mn.kv.WatchesUp()
	mn.cancel()
	select {
	case <-mn.done:
		if mn.err != nil && !mn.crashed.Load() {
			m.t.Errorf("node %s: Run returned %v after its context was cancelled; want nil", mn.name, mn.err)
		}
	case <-time.After(promptTimeout):
		m.t.Errorf("node %s: Run did not return within %v of its context being cancelled", mn.name, promptTimeout)
	}
}

// crashNode simulates a process crash: the Recorder marks it dead (it runs
// nothing from now on), its handle is closed first (so nothing it does
// afterwards reaches the store, and its lease is not revoked but expires),
// then its context is cancelled.
func (m *mep) crashNode(mn *mepNode) {
	m.t.Helper()
	mn.crashed.Store(true)
	m.rec.Crash(mn.name)
	_ = mn.kv.Close()
	mn.cancel()
}

// stopNode stops mn gracefully (Node.Stop), advancing time as needed, and
// checks that Stop and Run both return nil.
func (m *mep) stopNode(mn *mepNode) {
	m.t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- mn.n.Stop(m.ctx) }()
	var stopErr error
	m.waitFor(mn.name+" to stop gracefully", func() string {
		select {
		case stopErr = <-errc:
			errc <- stopErr
			return ""
		default:
			return "Stop has not returned"
		}
	})
	if stopErr != nil {
		m.fatalf("node %s: Stop = %v, want nil", mn.name, stopErr)
	}
	m.waitFor(mn.name+"'s Run to return after Stop", func() string {
		select {
		case <-mn.done:
			return ""
		default:
			return "Run has not returned"
		}
	})
	if mn.err != nil {
		m.fatalf("node %s: Run = %v after Stop, want nil", mn.name, mn.err)
	}
	mn.stopped.Store(true)
}

// healthy reports whether mn is alive and reachable.
func (n *mepNode) healthy() bool {
	if n.crashed.Load() || n.stopped.Load() {
		return false
	}
	n.kv.mu.Lock()
	defer n.kv.mu.Unlock()
	return n.kv.release == nil && n.kv.hung == nil && n.kv.down == nil && !n.kv.closed
}

// mepCoord is one simulated coordinator process.
type mepCoord struct {
	name    string
	kv      *procKV
	c       *channelmgr.Coordinator
	cancel  context.CancelFunc
	done    chan struct{}
	err     error
	crashed atomic.Bool
}

// startCoord starts a coordinator process on a fresh handle.
func (m *mep) startCoord(extra ...channelmgr.Option) *mepCoord {
	m.t.Helper()
	m.mu.Lock()
	m.nextCoord++
	name := fmt.Sprintf("c%d", m.nextCoord)
	m.mu.Unlock()
	mc := &mepCoord{name: name, done: make(chan struct{})}
	mc.kv = newProcKV(m.env.Open(m.t), name, roleCoord, m.chk)
	opts := []channelmgr.Option{
		channelmgr.WithID(name),
		channelmgr.WithSessionTTL(m.tm.coordTTL),
		channelmgr.WithNodeTTL(m.tm.nodeTTL),
		channelmgr.WithWatchTimeout(m.tm.watchTimeout),
		channelmgr.WithReleaseTimeout(m.tm.releaseTimout),
		channelmgr.WithCheckInterval(m.tm.check),
		channelmgr.WithBackoff(m.tm.backoffBase, m.tm.backoffMax),
		channelmgr.WithClock(m.clock),
		channelmgr.WithLogger(m.log.Named(name)),
	}
	c, err := channelmgr.New(mc.kv, append(opts, extra...)...)
	if err != nil {
		m.t.Fatalf("channelmgr.New(%s): %v", name, err)
	}
	mc.c = c
	ctx, cancel := context.WithCancel(context.Background())
	mc.cancel = cancel
	go func() {
		defer close(mc.done)
		mc.err = c.Run(ctx)
	}()
	m.t.Cleanup(func() {
		mc.kv.Heal()
		mc.kv.WatchesUp()
		mc.cancel()
		select {
		case <-mc.done:
			if mc.err != nil && !mc.crashed.Load() && !errors.Is(mc.err, context.Canceled) {
				m.t.Errorf("coordinator %s: Run returned %v after its context was cancelled", mc.name, mc.err)
			}
		case <-time.After(promptTimeout):
			m.t.Errorf("coordinator %s: Run did not return within %v of its context being cancelled", mc.name, promptTimeout)
		}
	})
	m.mu.Lock()
	m.coords = append(m.coords, mc)
	m.mu.Unlock()
	return mc
}

// waitLeader waits until mc leads (its own view and the leader key agree).
func (m *mep) waitLeader(mc *mepCoord) {
	m.t.Helper()
	m.waitFor(mc.name+" to lead", func() string {
		if !mc.c.IsLeader() {
			return "IsLeader is false"
		}
		if l := m.chk.View().Leader; l != mc.name {
			return fmt.Sprintf("leader key names %q", l)
		}
		return ""
	})
}

// crashCoord crashes a coordinator: handle closed first, then cancelled.
func (m *mep) crashCoord(mc *mepCoord) {
	mc.crashed.Store(true)
	_ = mc.kv.Close()
	mc.cancel()
}

// leaderCoord starts a coordinator and waits until it leads.
func (m *mep) leaderCoord() *mepCoord {
	m.t.Helper()
	mc := m.startCoord()
	m.waitLeader(mc)
	return mc
}

// register registers channels (of collection coll) through the suite's handle.
func (m *mep) register(coll int64, names ...string) {
	m.t.Helper()
	for _, n := range names {
		m.idempotent("Register("+n+")", channelmgr.ErrAlreadyRegistered, func() error {
			return channelmgr.Register(m.ctx, m.b, meta.ChannelSpec{Name: n, CollectionID: coll})
		})
	}
	m.sync()
}

// deregister deregisters channels through the suite's handle.
func (m *mep) deregister(names ...string) {
	m.t.Helper()
	for _, n := range names {
		m.idempotent("Deregister("+n+")", channelmgr.ErrNotRegistered, func() error {
			return channelmgr.Deregister(m.ctx, m.b, n)
		})
	}
	m.sync()
}

// idempotent runs one of the suite's own writes, retrying what a store
// under load may answer (an unknown outcome after a raft leader change, no
// leader for a moment) until it succeeds or the scenario's context ends; an
// error wrapping done after an unknown outcome means the earlier attempt
// landed.
func (m *mep) idempotent(what string, done error, f func() error) {
	m.t.Helper()
	unknown := false
	for {
		err := f()
		switch {
		case err == nil:
			return
		case unknown && errors.Is(err, done):
			return
		case (errors.Is(err, kv.ErrUnknownOutcome) || errors.Is(err, kv.ErrUnavailable)) && m.ctx.Err() == nil:
			unknown = unknown || errors.Is(err, kv.ErrUnknownOutcome)
			m.t.Logf("%s: %v; retrying", what, err)
			t := time.NewTimer(50 * time.Millisecond)
			select {
			case <-t.C:
			case <-m.ctx.Done():
				t.Stop()
			}
		default:
			m.t.Fatalf("%s: %v", what, err)
		}
	}
}

// names returns n channel names prefix-000 ... .
func names(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%04d", prefix, i)
	}
	return out
}

// procByID maps current node IDs to their processes.
func (m *mep) procByID() map[int64]*mepNode {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[int64]*mepNode)
	for _, n := range m.nodes {
		if id := n.ID(); id != 0 && !n.crashed.Load() {
			out[id] = n
		}
	}
	return out
}

// unsettled says why the cluster has not settled ("" when it has):
// invariant (4), with one healthy node alive every registered channel is
// Watched on a live node, runs there under the key's token, and nothing
// else runs or stays assigned.
func (m *mep) unsettled() string { return m.unsettledIn(m.chk.View()) }

// settledCounts returns counts and unsettled's answer of one view of the
// checker: a wait that checked them on two views could see every channel
// settled on the first and the counts it wanted on the second, with moves
// started in between (CapacityChange saw 10 Watched and 2 ToRelease on a
// node as "a keeps 10, all settled").
func (m *mep) settledCounts() (map[int64]int, string) {
	v := m.chk.View()
	if why := m.unsettledIn(v); why != "" {
		return nil, why
	}
	return countsIn(v), ""
}

// unsettledIn is unsettled on view v.
func (m *mep) unsettledIn(v View) string {
	procs := m.procByID()
	healthy := 0
	for id, st := range v.Live {
		if p := procs[id]; p != nil && p.healthy() && st == meta.NodeServing {
			healthy++
		}
	}
	if healthy == 0 {
		return "no healthy serving node"
	}
	chs := make([]string, 0, len(v.Registered))
	for ch := range v.Registered {
		chs = append(chs, ch)
	}
	sort.Strings(chs)
	for _, ch := range chs {
		a, ok := v.Assign[ch]
		switch {
		case !ok:
			return fmt.Sprintf("%s has no assignment key", ch)
		case a.Info.State != meta.Watched:
			return fmt.Sprintf("%s is %v on node %d", ch, a.Info.State, a.NodeID)
		case a.NodeID == 0:
			return fmt.Sprintf("%s waits in remaining", ch)
		}
		if _, live := v.Live[a.NodeID]; !live {
			return fmt.Sprintf("%s is Watched on dead node %d", ch, a.NodeID)
		}
		p := procs[a.NodeID]
		if p == nil {
			return fmt.Sprintf("%s is on node %d, which no process holds", ch, a.NodeID)
		}
		node, tok := m.rec.RunsOn(ch)
		if node != p.name {
			return fmt.Sprintf("%s is Watched on node %d (%s) but runs on %q", ch, a.NodeID, p.name, node)
		}
		if tok != a.Info.AssignRevision {
			return fmt.Sprintf("%s runs with token %d but its key says %d", ch, tok, a.Info.AssignRevision)
		}
	}
	for ch, pks := range v.Prepare {
		return fmt.Sprintf("%s has %d prepare keys (%s %v)", ch, len(pks), pks[0].Key, pks[0].Info.State)
	}
	for ch, a := range v.Assign {
		if !v.Registered[ch] && !a.Corrupt {
			return fmt.Sprintf("unregistered %s still has key %s (%v)", ch, a.Key, a.Info.State)
		}
	}
	for ch, nodes := range m.rec.Running() {
		if !v.Registered[ch] {
			return fmt.Sprintf("unregistered %s still runs on %v", ch, nodes)
		}
	}
	return ""
}

// checkRunning flags, at every poll of every wait, a registered channel
// whose key says Watched on a live node held by a healthy process that does
// not run it, for longer than mepNowhereTTLs node TTLs on the scenario's
// clock: "registered but running nowhere" (a node ignoring keys under its
// prefix, say), caught while it happens rather than only when a scenario
// settles.
func (m *mep) checkRunning() {
	v := m.chk.View()
	procs := m.procByID()
	now := m.clock.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.nowhere == nil {
		m.nowhere = map[string]time.Time{}
	}
	seen := map[string]bool{}
	for ch := range v.Registered {
		a, ok := v.Assign[ch]
		if !ok || a.Corrupt || a.NodeID == 0 || a.Info.State != meta.Watched || v.Live[a.NodeID] != meta.NodeServing {
			continue
		}
		p := procs[a.NodeID]
		if p == nil || !p.healthy() {
			continue
		}
		if node, _ := m.rec.RunsOn(ch); node == p.name {
			continue
		}
		seen[ch] = true
		since, ok := m.nowhere[ch]
		if !ok {
			m.nowhere[ch] = now
			continue
		}
		if now.Sub(since) > mepNowhereTTLs*m.tm.nodeTTL {
			m.chk.Report("channel %s: registered and Watched on node %d (%s, healthy) since %v, but running nowhere",
				ch, a.NodeID, p.name, now.Sub(since))
			m.nowhere[ch] = now // report once per span
		}
	}
	for ch := range m.nowhere {
		if !seen[ch] {
			delete(m.nowhere, ch)
		}
	}
}

// mepNowhereTTLs bounds how long a Watched key may name a healthy node that
// does not run the channel (a node between its fence and its key's expiry
// is not healthy, so the bound is for nothing legitimate).
const mepNowhereTTLs = 3

// settle waits for invariant (4).
func (m *mep) settle() {
	m.t.Helper()
	m.sync()
	m.waitFor("every registered channel to be Watched", m.unsettled)
}

// counts returns how many Watched channels each live node ID holds.
func (m *mep) counts() map[int64]int { return countsIn(m.chk.View()) }

// countsIn is counts on view v.
func countsIn(v View) map[int64]int {
	out := make(map[int64]int)
	for id := range v.Live {
		out[id] = 0
	}
	for _, a := range v.Assign {
		if a.NodeID != 0 && a.Info.State == meta.Watched {
			out[a.NodeID]++
		}
	}
	return out
}

// owners returns each registered channel's node ID.
func (m *mep) owners() map[string]int64 {
	v := m.chk.View()
	out := make(map[string]int64, len(v.Assign))
	for ch, a := range v.Assign {
		out[ch] = a.NodeID
	}
	return out
}

// requireSpread checks that the Watched counts per live node differ by at
// most one.
func (m *mep) requireSpread(what string) map[int64]int {
	m.t.Helper()
	c := m.counts()
	lo, hi := -1, -1
	for _, n := range c {
		if lo < 0 || n < lo {
			lo = n
		}
		hi = max(hi, n)
	}
	if hi-lo > 1 {
		m.fatalf("%s: counts per node %v differ by more than one", what, c)
	}
	return c
}

// channelWrites counts the writes the Checker saw to the given channels'
// keys (every channel when none is given).
func (m *mep) channelWrites(chs ...string) int {
	n := 0
	if len(chs) == 0 {
		for ch := range m.chk.View().Registered {
			chs = append(chs, ch)
		}
	}
	for _, ch := range chs {
		n += len(m.chk.History(ch))
	}
	return n
}

// requireStable lets d pass and checks that no assignment changed.
func (m *mep) requireStable(d time.Duration, why string) {
	m.t.Helper()
	m.sync()
	before := m.chk.Rev()
	hist := m.historyLen()
	m.elapse(d)
	m.sync()
	if after := m.historyLen(); after != hist {
		m.fatalf("%s: assignments changed while the cluster should be stable (%d key writes since revision %d)", why, after-hist, before)
	}
}

func (m *mep) historyLen() int {
	return m.chk.HistoryLen()
}

// toWatchPuts counts the ToWatch puts of ch after revision since.
func (m *mep) toWatchPuts(ch string, since int64) int {
	n := 0
	for _, kc := range m.chk.History(ch) {
		if kc.Rev > since && kc.Type == kv.EventPut && kc.Info.State == meta.ToWatch && kc.Info.Progress == 0 {
			n++
		}
	}
	return n
}

// movesSince counts, over chs, the assignments written after revision
// since (each ToWatch put that starts a new attempt).
func (m *mep) movesSince(since int64, chs []string) int {
	n := 0
	for _, ch := range chs {
		n += m.toWatchPuts(ch, since)
	}
	return n
}

// shutdown ends the scenario: every process is reaped by its own cleanup
// (registered later, so run earlier); here the Checker stops, leftover
// leases are revoked so no expiry spills into a later test on a shared
// server, and the final violations are reported.
func (m *mep) shutdown() {
	ctx, cancel := cleanupContext()
	defer cancel()
	for _, l := range m.chk.LiveLeases() {
		_ = m.b.Revoke(ctx, l)
	}
	m.stopChecker()
	select {
	case err := <-m.checkerDone:
		if err != nil && !errors.Is(err, kv.ErrClosed) {
			m.t.Errorf("checker: %v", err)
		}
	case <-time.After(promptTimeout):
		m.t.Errorf("checker did not stop")
	}
	if v := m.violations(); len(v) > 0 {
		m.t.Errorf("invariant violations:\n\t%s", strings.Join(v, "\n\t"))
	}
	if m.t.Failed() {
		ev := m.rec.Events()
		if len(ev) > 150 {
			ev = ev[len(ev)-150:]
		}
		var b strings.Builder
		for _, e := range ev {
			b.WriteString(e.String())
			b.WriteByte('\n')
		}
		m.t.Logf("last handler events:\n%s", b.String())
		m.t.Logf("last component logs:\n%s", m.logs.String())
	}
}

// finish is the common end of every scenario: no violation so far.
func (m *mep) finish() {
	m.t.Helper()
	m.requireNoViolations()
}
