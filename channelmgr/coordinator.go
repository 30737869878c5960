package channelmgr

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/session"
	"github.com/jonboulle/clockwork"
	"go.uber.org/zap"
)

// ErrRunning: Run was called while another Run of the same Coordinator runs.
var ErrRunning = errors.New("channelmgr: coordinator already running")

// Coordinator is the MEP's DataCoord side: while it leads it reconciles the
// registry against the assignments (see the package doc). Create it with
// New and start it with Run; several Coordinators (in several processes) on
// one root elect one leader, and the others wait to take over.
type Coordinator struct {
	b       kv.Backend
	cfg     config
	log     *zap.Logger
	m       *metrics
	leading atomic.Bool
	running atomic.Bool

	// onPass, when set (by tests), is called by the decision goroutine after
	// each reconcile pass with the clock time the pass decided at and the
	// revision of the view it decided on.
	onPass func(now time.Time, rev int64)
}

// New returns a Coordinator on b, which it does not close. Invalid options
// fail with ErrInvalidOption before any call to b; a Registerer that
// rejects the metrics fails New with its error.
func New(b kv.Backend, opts ...Option) (*Coordinator, error) {
	if b == nil {
		return nil, fmt.Errorf("%w: nil backend", ErrInvalidOption)
	}
	cfg := config{
		sessionTTL:       DefaultSessionTTL,
		nodeTTL:          DefaultNodeTTL,
		watchTimeout:     DefaultWatchTimeout,
		releaseTimeout:   DefaultReleaseTimeout,
		checkInterval:    DefaultCheckInterval,
		policy:           LeastLoaded(),
		maxMovesInFlight: DefaultMaxMovesInFlight,
		backoffBase:      DefaultBackoffBase,
		backoffMax:       DefaultBackoffMax,
		quarantineAfter:  DefaultQuarantineAfter,
		quarantineBase:   DefaultQuarantineBase,
		quarantineMax:    DefaultQuarantineMax,
		clock:            clockwork.NewRealClock(),
	}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.id == "" {
		cfg.id = defaultID()
	}
	if cfg.log == nil {
		cfg.log = zap.NewNop()
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.reg)
	if err != nil {
		return nil, fmt.Errorf("channelmgr: register metrics: %w", err)
	}
	return &Coordinator{b: b, cfg: cfg, log: cfg.log.With(zap.String("coordinator", cfg.id)), m: m}, nil
}

// IsLeader reports whether this Coordinator leads right now. It turns false
// the moment leadership is lost, before Run has finished stopping.
func (c *Coordinator) IsLeader() bool { return c.leading.Load() }

// ID returns the coordinator's ID (WithID).
func (c *Coordinator) ID() string { return c.cfg.id }

// Run campaigns for leadership with a fresh session and, while leading,
// reconciles. When leadership is lost (session fenced or expired, leader key
// deleted) it stops acting at once and campaigns again with a new session.
// It returns nil when ctx is done, after resigning (so a standby takes over
// without waiting for the lease) and closing its session; it returns an
// error wrapping kv.ErrClosed if the backend is closed, and ErrRunning if
// another Run of c is active.
func (c *Coordinator) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer c.running.Store(false)
	delay := c.cfg.checkInterval
	for ctx.Err() == nil {
		err := c.term(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, kv.ErrClosed):
			return fmt.Errorf("channelmgr: run: %w", err)
		case err != nil && !errors.Is(err, errLeadershipLost):
			c.log.Warn("coordinator term failed, retrying", zap.Error(err), zap.Duration("delay", delay))
			if !c.sleep(ctx, delay) {
				return nil
			}
			delay = min(2*delay, c.cfg.sessionTTL)
			continue
		}
		delay = c.cfg.checkInterval
	}
	return nil
}

// term is one session: campaign, lead until leadership or ctx ends.
func (c *Coordinator) term(ctx context.Context) error {
	s, err := session.New(ctx, c.b, session.WithTTL(c.cfg.sessionTTL), session.WithClock(c.cfg.clock),
		session.WithLogger(c.log))
	if err != nil {
		return fmt.Errorf("channelmgr: session: %w", err)
	}
	var l *session.Leadership
	defer func() {
		if l != nil && ctx.Err() == nil {
			// Leadership was lost: the lease is gone or going, and the
			// backend may be unreachable. Let it expire; no I/O.
			s.Abandon()
			return
		}
		// Stopping on purpose (or the campaign failed): resign so a
		// standby takes over without waiting for the lease, and revoke.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout(c.cfg.sessionTTL))
		defer cancel()
		if l != nil {
			if err := l.Resign(cctx); err != nil {
				c.log.Warn("resign failed", zap.Error(err))
			}
		}
		if err := s.Close(cctx); err != nil {
			c.log.Debug("session close failed; the lease will expire", zap.Error(err))
		}
	}()
	l, err = session.Campaign(ctx, c.b, s, meta.CoordSession{ID: c.cfg.id, Addr: c.cfg.addr, StartTime: c.cfg.clock.Now()})
	if err != nil {
		return fmt.Errorf("channelmgr: campaign: %w", err)
	}
	return c.lead(ctx, l)
}

// cleanupTimeout bounds the resign and revoke at the end of a term: a
// network bound, not a protocol timer (the lease expires anyway).
func cleanupTimeout(ttl time.Duration) time.Duration { return min(ttl, 5*time.Second) }

// sleep waits d on the clock; false when ctx ended first.
func (c *Coordinator) sleep(ctx context.Context, d time.Duration) bool {
	t := c.cfg.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.Chan():
		return true
	}
}

// leader is what the decision loop needs of a session.Leadership.
type leader interface {
	Guard() kv.Cmp
	Token() int64
	Done() <-chan struct{}
}

// errLeadershipLost ends a term whose leadership ended (not an error of Run).
var errLeadershipLost = errors.New("channelmgr: leadership lost")

// lead runs the decision loop until leadership or ctx ends. Leadership loss
// cancels the loop's context at once; a write in flight gets a grace of one
// session TTL to learn its outcome (so that a rejection by the leader guard
// is counted and logged as one), and Guard keeps anything that still lands
// out.
func (c *Coordinator) lead(ctx context.Context, l leader) error {
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c.leading.Store(true)
	c.m.leader.Set(1)
	c.m.leaderGain.Inc()
	c.log.Info("leading", zap.Int64("token", l.Token()))
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		select {
		case <-l.Done():
			c.leading.Store(false)
			c.m.leader.Set(0)
			cancel()
		case <-lctx.Done():
		}
	}()
	r := newReconciler(c, l)
	r.outer = ctx
	err := r.run(lctx)
	cancel()
	<-stopped
	c.leading.Store(false)
	c.m.leader.Set(0)
	c.log.Info("stopped leading", zap.Int64("token", l.Token()), zap.Error(err))
	if ctx.Err() != nil {
		return ctx.Err()
	}
	select {
	case <-l.Done():
		return errLeadershipLost
	default:
	}
	if errors.Is(err, errDeposed) || errors.Is(err, context.Canceled) {
		return errLeadershipLost
	}
	return err
}
