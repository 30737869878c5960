package nodewatch

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/session"
	"github.com/jonboulle/clockwork"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Defaults.
const (
	DefaultSessionTTL       = 10 * time.Second
	DefaultProgressInterval = 10 * time.Second
	// DefaultMaxAttempt caps one Watch or Release call, progress or not.
	DefaultMaxAttempt = 10 * time.Minute
)

// Errors.
var (
	// ErrInvalidConfig: New rejected an option value.
	ErrInvalidConfig = errors.New("nodewatch: invalid config")
	// ErrAlreadyRun: Run was called a second time; a Node runs once.
	ErrAlreadyRun = errors.New("nodewatch: Run called twice")
)

// Option configures New.
type Option func(*config)

type config struct {
	ttl        time.Duration
	progress   time.Duration
	maxAttempt time.Duration
	margin     time.Duration // 0: TTL/5
	keepAlive  time.Duration // 0: TTL/3
	clock      clockwork.Clock
	log        *zap.Logger
	addr       string
	version    string
	reg        prometheus.Registerer
	capacity   float64       // see WithCapacity
	labels     meta.Labels   // see WithLabels
	loadEvery  time.Duration // see WithLoadInterval
}

// WithSessionTTL sets the node's session lease TTL (default 10s; > 0). The
// node fences itself one fence margin (WithFenceMargin) before the lease can
// expire on the server. The node advertises it in its session key; the
// coordinator's WithNodeTTL should be at least the largest TTL of any node.
func WithSessionTTL(d time.Duration) Option { return func(c *config) { c.ttl = d } }

// WithFenceMargin sets how long before the earliest possible server-side
// expiry of its lease the node fences itself: cancels every Watch and
// calls every Release (default, and 0: TTL/5). It is the time those calls have to
// finish while the node still certainly owns its channels, so size it to
// the handler's slowest release (a Milvus flowgraph flush can take longer
// than TTL/5 = 2 s); it must also cover the drift between the node's and the
// store's clocks. New requires 0 < margin < TTL, and keep-alive interval +
// margin < TTL.
func WithFenceMargin(d time.Duration) Option { return func(c *config) { c.margin = d } }

// WithKeepAliveInterval sets how often the node's session renews its lease
// (default, and 0: TTL/3). New requires interval > 0 and interval + fence
// margin < TTL; keep interval + margin well under TTL, so that a keep-alive
// can fail and the next still land before the fence deadline.
func WithKeepAliveInterval(d time.Duration) Option { return func(c *config) { c.keepAlive = d } }

// WithProgressInterval sets the least time between two Progress heartbeats
// on one channel (default 10s; > 0). A heartbeat is written only when the
// handler reported progress (ReportProgress) since the last one; it
// re-arms the coordinator's watch or release timeout. Keep it well under
// the coordinator's watch and release timeouts: a report reaches the store
// at most one interval late.
func WithProgressInterval(d time.Duration) Option { return func(c *config) { c.progress = d } }

// WithMaxAttempt caps one Handler call (one Watch, one Release), whether
// or not it reports progress (default 10 min; 0: no cap; >= 0). Past the
// cap the node cancels the call's ctx and ignores its progress reports;
// once the call returns, a Watch is reported as WatchFailure and a Release
// as ReleaseFailure, with a LastError that names the cap. A call that
// ignores its ctx still runs: without heartbeats the coordinator's timeout
// then takes the channel back (a Watch) or evicts the node (a Release).
func WithMaxAttempt(d time.Duration) Option { return func(c *config) { c.maxAttempt = d } }

// WithClock sets the clock of every timer (default: the real clock).
func WithClock(c clockwork.Clock) Option { return func(cfg *config) { cfg.clock = c } }

// WithLogger sets the logger (default zap.NewNop()).
func WithLogger(l *zap.Logger) Option { return func(c *config) { c.log = l } }

// WithAddr sets the address published in the node's session key.
func WithAddr(addr string) Option { return func(c *config) { c.addr = addr } }

// WithVersion sets the version published in the node's session key.
func WithVersion(v string) Option { return func(c *config) { c.version = v } }

// WithRegisterer registers the node's metrics (chanwatch_node_channels by
// state, chanwatch_node_session_up, chanwatch_node_id) with r (default nil:
// no metrics). New fails if registration does, e.g. for a second Node on
// the same Registerer: wrap it with prometheus.WrapRegistererWith to tell
// them apart.
func WithRegisterer(r prometheus.Registerer) Option { return func(c *config) { c.reg = r } }

// Node is one worker node: it registers, watches its assignments and runs
// a Handler for each. Create it with New, run it with Run. Methods are
// safe for concurrent use.
type Node struct {
	b   kv.Backend
	h   Handler
	cfg config
	log *zap.Logger

	runOnce sync.Once
	runDone chan struct{} // closed when Run returns

	mu       sync.Mutex
	id       int64
	cur      *incarnation // the registration being served; nil between
	stopping bool
	stopCh   chan struct{} // closed once Stop has marked the node stopping
	// held names the channels whose last Release failed: the handler
	// still holds them, across incarnations, until a Release succeeds.
	held map[string]bool
	// loads is what the handler reported with ReportLoad (see load.go).
	loads *loadState
}

// unreleased reports whether the handler still holds channel name because
// its last Release failed (in this incarnation or an earlier one).
func (n *Node) unreleased(name string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.held[name]
}

func (n *Node) setUnreleased(name string, held bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !held {
		delete(n.held, name)
		return
	}
	if n.held == nil {
		n.held = map[string]bool{}
	}
	n.held[name] = true
}

// Unreleased returns, sorted, the channels whose last Release failed: the
// handler may still run them. Each is released again before its next
// Watch on this Node (Watch is not called until that Release succeeds),
// and once more before the Node registers again after a session loss.
func (n *Node) Unreleased() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]string, 0, len(n.held))
	for name := range n.held {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// retryReleases calls Release once more on every channel whose last Release
// failed, before the node takes a new ID.
func (n *Node) retryReleases(ctx context.Context) {
	for _, name := range n.Unreleased() {
		rctx := context.WithValue(ctx, callKey{}, callInfo{node: n.ID()})
		err := callHandler(n.log, "Release", name, func() error { return n.h.Release(rctx, name) })
		n.setUnreleased(name, err != nil)
		if err != nil {
			n.log.Warn("release retry failed; the channel is released again before its next watch",
				zap.String("channel", name), zap.Error(err))
		} else {
			n.log.Debug("channel stopped", zap.String("channel", name), zap.String("why", "release retried after session loss"))
		}
	}
}

// New returns a Node for handler h on backend b. It validates the options
// (ErrInvalidConfig) and does no I/O.
func New(b kv.Backend, h Handler, opts ...Option) (*Node, error) {
	switch {
	case b == nil:
		return nil, fmt.Errorf("%w: nil backend", ErrInvalidConfig)
	case h == nil:
		return nil, fmt.Errorf("%w: nil handler", ErrInvalidConfig)
	}
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	n := &Node{
		b:       b,
		h:       h,
		cfg:     cfg,
		log:     cfg.log,
		runDone: make(chan struct{}),
		stopCh:  make(chan struct{}),
	}
	if cfg.reg != nil {
		if err := cfg.reg.Register(newCollector(n)); err != nil {
			return nil, fmt.Errorf("nodewatch: register metrics: %w", err)
		}
	}
	return n, nil
}

// ValidateOptions returns the error New would return for opts (wrapping
// ErrInvalidConfig), or nil, without a backend: a CLI checks its flags
// before it connects.
func ValidateOptions(opts ...Option) error {
	_, err := newConfig(opts)
	return err
}

func newConfig(opts []Option) (config, error) {
	cfg := config{ttl: DefaultSessionTTL, progress: DefaultProgressInterval, maxAttempt: DefaultMaxAttempt,
		clock: clockwork.NewRealClock()}
	for _, o := range opts {
		o(&cfg)
	}
	margin, keepAlive := cfg.fence()
	bad := func(format string, args ...any) (config, error) {
		return config{}, fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	switch {
	case cfg.ttl <= 0:
		return bad("session TTL %v must be > 0", cfg.ttl)
	case cfg.progress <= 0:
		return bad("progress interval %v must be > 0", cfg.progress)
	case cfg.maxAttempt < 0:
		return bad("max attempt %v must be >= 0 (0: no cap)", cfg.maxAttempt)
	case margin <= 0 || margin >= cfg.ttl:
		return bad("fence margin %v must be > 0 and < session TTL %v", margin, cfg.ttl)
	case keepAlive <= 0 || keepAlive+margin >= cfg.ttl:
		return bad("keep-alive interval %v must be > 0 and leave room before the fence deadline: interval + fence margin %v must be < session TTL %v",
			keepAlive, margin, cfg.ttl)
	case cfg.clock == nil:
		return bad("nil clock")
	}
	if err := cfg.validatePlacement(); err != nil {
		return bad("%v", err)
	}
	if cfg.log == nil {
		cfg.log = zap.NewNop()
	}
	return cfg, nil
}

// fence returns the fence margin and keep-alive interval, defaults applied.
func (c *config) fence() (margin, keepAlive time.Duration) {
	margin, keepAlive = c.margin, c.keepAlive
	if margin == 0 {
		margin = c.ttl / 5
	}
	if keepAlive == 0 {
		keepAlive = c.ttl / 3
	}
	return margin, keepAlive
}

// ID returns the node's current ID: 0 before the first registration; a new
// ID after each re-registration (after a session loss).
func (n *Node) ID() int64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.id
}

// Running returns, sorted, the channels whose Watch succeeded and was
// acknowledged and that are not released: the node's local view.
func (n *Node) Running() []string {
	n.mu.Lock()
	inc := n.cur
	n.mu.Unlock()
	if inc == nil {
		return nil
	}
	out := inc.running()
	slices.Sort(out)
	return out
}

// Run registers the node (a new session and a new ID, so its prefix is
// empty), then serves its assignments until ctx is done or Stop completes,
// and returns nil. On session loss it releases every channel, then
// registers again under a new ID. When ctx is done it releases every
// channel locally, revokes the lease (best effort, so the coordinator sees
// the node go at once) and returns nil. It returns an error only when the
// backend is closed, or when called twice (ErrAlreadyRun). Backend
// failures are retried with backoff on the clock.
func (n *Node) Run(ctx context.Context) error {
	first := false
	n.runOnce.Do(func() { first = true })
	if !first {
		return ErrAlreadyRun
	}
	defer close(n.runDone)
	var retry backoff
	for {
		if n.isStopping() || ctx.Err() != nil {
			return nil
		}
		inc, err := n.register(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, kv.ErrClosed) || errors.Is(err, session.ErrInvalidConfig) {
				return fmt.Errorf("nodewatch: register: %w", err)
			}
			d := retry.next()
			n.log.Warn("register failed; retrying", zap.Duration("after", d), zap.Error(err))
			if sleep(ctx, n.cfg.clock, d) != nil {
				return nil
			}
			continue
		}
		retry.reset()
		why := inc.serve(ctx)
		n.mu.Lock()
		n.cur = nil
		n.mu.Unlock()
		switch why {
		case endCtx:
			// Revoke so the coordinator moves the channels at once, but do not
			// hang on an unreachable backend: the lease expires anyway.
			rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
			t := n.cfg.clock.AfterFunc(inc.sess.TTL(), cancel)
			err := inc.sess.Close(rctx)
			t.Stop()
			cancel()
			n.log.Info("node stopped (context done)", zap.Int64("node", inc.id), zap.Error(err))
			return nil
		case endDrained:
			err := inc.sess.Close(ctx)
			n.log.Info("node stopped (drained)", zap.Int64("node", inc.id), zap.Error(err))
			return nil
		case endSessionLost:
			// Every channel is released. Revoke in case the lease still lives
			// (a fence on a slow backend), then take a new ID.
			_ = inc.sess.Close(ctx)
			n.log.Warn("session lost; channels released, registering again",
				zap.Int64("old_node", inc.id), zap.Error(inc.sess.Err()))
			n.retryReleases(context.WithoutCancel(ctx))
		}
	}
}

// register opens a session and registers a new node ID on it.
func (n *Node) register(ctx context.Context) (*incarnation, error) {
	margin, keepAlive := n.cfg.fence()
	sess, err := session.New(ctx, n.b, session.WithTTL(n.cfg.ttl), session.WithFenceMargin(margin),
		session.WithKeepAliveInterval(keepAlive), session.WithClock(n.cfg.clock), session.WithLogger(n.log))
	if err != nil {
		return nil, err
	}
	node, err := session.RegisterNode(ctx, n.b, sess, n.sessionInfo())
	if err != nil {
		_ = sess.Close(ctx)
		return nil, err
	}
	inc := newIncarnation(n, sess, node)
	n.mu.Lock()
	n.id, n.cur = node.ID(), inc
	n.mu.Unlock()
	n.log.Info("node registered", zap.Int64("node", node.ID()), zap.Int64("lease", int64(sess.Lease())))
	return inc, nil
}

func (n *Node) isStopping() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stopping
}

// Stop drains the node gracefully: it marks the node's session stopping
// (the coordinator moves every channel away and places none on it), waits
// until the node's prefix is empty and every channel is released, revokes
// the lease, and returns once Run has returned (nil). It returns the error
// of marking the node stopping, or ctx's error if the drain does not finish
// in time (the node then keeps draining; cancel Run's context to stop at
// once). Before Run registers, Stop makes Run return without registering;
// if Run is never called, Stop waits for ctx.
//
// From inside a Handler call, pass the call's ctx: Stop then marks the node
// stopping, starts the drain and returns nil at once, since the node cannot
// finish while it waits for that very call. With any other ctx, a Stop
// called from a handler waits until ctx ends (the drain goes on).
func (n *Node) Stop(ctx context.Context) error {
	if _, inHandler := ctx.Value(callKey{}).(callInfo); inHandler {
		errc := make(chan error, 1)
		mctx := context.WithoutCancel(ctx)
		go func() { errc <- n.stop(mctx, false) }()
		return <-errc
	}
	return n.stop(ctx, true)
}

// stop marks the node stopping and, if wait, waits for Run to return.
func (n *Node) stop(ctx context.Context, wait bool) error {
	n.mu.Lock()
	inc := n.cur
	n.mu.Unlock()
	if inc != nil {
		if err := inc.node.SetStopping(ctx); err != nil && !errors.Is(err, session.ErrNodeNotFound) {
			// Not marked: nothing changed, the caller may retry.
			return fmt.Errorf("nodewatch: stop: %w", err)
		}
	}
	n.mu.Lock()
	if !n.stopping {
		n.stopping = true
		close(n.stopCh)
	}
	n.mu.Unlock()
	if !wait {
		return nil
	}
	select {
	case <-n.runDone:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("nodewatch: stop: %w", ctx.Err())
	}
}

// backoff spaces out retries against a failing backend: the first few are
// immediate (a dropped watch is routine), then they back off to a cap.
type backoff struct{ fails int }

const (
	immediateRetries = 3
	minRetry         = 50 * time.Millisecond
	maxRetry         = 2 * time.Second
)

func (b *backoff) reset() { b.fails = 0 }

func (b *backoff) next() time.Duration {
	b.fails++
	if b.fails <= immediateRetries {
		return 0
	}
	return min(minRetry<<min(b.fails-immediateRetries-1, 10), maxRetry)
}

// sleep waits d on clock; it returns ctx's error if ctx ends first.
func sleep(ctx context.Context, clock clockwork.Clock, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.Chan():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
