package session

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/jonboulle/clockwork"
	"go.uber.org/zap"
)

// DefaultTTL is the lease TTL a Session requests unless WithTTL says otherwise.
const DefaultTTL = 10 * time.Second

// Option configures New.
type Option func(*config)

type config struct {
	ttl      time.Duration
	interval time.Duration // 0: TTL/3
	margin   time.Duration
	marginOK bool // margin was set; otherwise TTL/5
	clock    clockwork.Clock
	log      *zap.Logger
	// suspend is a clock that counts through a system suspend (see
	// WithSuspendClock); nil: none.
	suspend    func() time.Duration
	suspendSet bool
}

// WithTTL sets the lease TTL to request (default 10s; must be > 0). The
// backend may grant more; TTL reports what it granted.
func WithTTL(d time.Duration) Option { return func(c *config) { c.ttl = d } }

// WithKeepAliveInterval sets how often the session renews its lease
// (default TTL/3). It must be > 0 and leave room before the fence deadline:
// interval + fence margin < TTL.
func WithKeepAliveInterval(d time.Duration) Option { return func(c *config) { c.interval = d } }

// WithFenceMargin sets how long before the earliest possible server-side
// expiry the session fences itself (default TTL/5; 0 <= margin < TTL). It
// bounds the time the owner has to stop its work after Done closes with
// ErrFenced, and it must cover the drift between the two clocks.
func WithFenceMargin(d time.Duration) Option {
	return func(c *config) { c.margin, c.marginOK = d, true }
}

// WithClock sets the clock of every timer (default: the real clock).
func WithClock(c clockwork.Clock) Option { return func(cfg *config) { cfg.clock = c } }

// WithLogger sets the logger (default zap.NewNop()).
func WithLogger(l *zap.Logger) Option { return func(c *config) { c.log = l } }

// isRealClock reports whether c is clockwork's real clock.
func isRealClock(c clockwork.Clock) bool {
	return reflect.TypeOf(c) == reflect.TypeOf(clockwork.NewRealClock())
}

func (c *config) validate() error {
	if c.ttl <= 0 {
		return fmt.Errorf("%w: TTL %v must be > 0", ErrInvalidConfig, c.ttl)
	}
	if c.clock == nil {
		return fmt.Errorf("%w: nil clock", ErrInvalidConfig)
	}
	if c.margin < 0 || c.margin >= c.ttl {
		return fmt.Errorf("%w: fence margin %v must be in [0, TTL %v)", ErrInvalidConfig, c.margin, c.ttl)
	}
	if c.interval <= 0 || c.interval+c.margin >= c.ttl {
		return fmt.Errorf("%w: keep-alive interval %v must be > 0 and < TTL %v − fence margin %v",
			ErrInvalidConfig, c.interval, c.ttl, c.margin)
	}
	return nil
}

// Session keeps one lease alive with KeepAliveOnce from its own loop, so it
// knows the send time of each keep-alive and can fence itself (see the
// package doc). It is the liveness everything else selects on: work that
// must stop when liveness is lost selects on Done. Methods are safe for
// concurrent use.
type Session struct {
	b        kv.Backend
	clock    clockwork.Clock
	log      *zap.Logger
	lease    kv.LeaseID
	ttl      time.Duration // as granted by the server
	interval time.Duration
	margin   time.Duration

	suspend func() time.Duration // nil: no suspend check

	mu       sync.Mutex
	deadline time.Time // fence deadline
	// suspendDeadline is the fence deadline on the suspend clock.
	suspendDeadline time.Duration
	err             error // why the session ended; set once, before done closes
	done            chan struct{}

	stopOnce sync.Once
	stop     chan struct{} // closed by Close/Abandon
	loopDone chan struct{}

	revokeMu sync.Mutex
	revoked  bool
}

// New grants a lease and starts keeping it alive. ctx bounds only the
// setup calls (Grant and the first keep-alive, which learns the TTL the
// server granted); the session then lives until Close, Abandon, or the
// loss of its lease. Invalid options fail with ErrInvalidConfig before any
// call to b.
func New(ctx context.Context, b kv.Backend, opts ...Option) (*Session, error) {
	cfg := config{ttl: DefaultTTL, clock: clockwork.NewRealClock()}
	for _, o := range opts {
		o(&cfg)
	}
	if !cfg.marginOK {
		cfg.margin = cfg.ttl / 5
	}
	if cfg.interval == 0 {
		cfg.interval = cfg.ttl / 3
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if b == nil {
		return nil, fmt.Errorf("%w: nil backend", ErrInvalidConfig)
	}
	if cfg.log == nil {
		cfg.log = zap.NewNop()
	}

	if !cfg.suspendSet {
		if isRealClock(cfg.clock) {
			cfg.suspend = bootClock
		}
	}
	id, err := b.Grant(ctx, cfg.ttl)
	if err != nil {
		return nil, fmt.Errorf("session: grant lease: %w", err)
	}
	sent := cfg.clock.Now()
	var sentSuspend time.Duration
	if cfg.suspend != nil {
		sentSuspend = cfg.suspend()
	}
	ttl, err := b.KeepAliveOnce(ctx, id)
	if err != nil {
		// Best effort: nobody will renew this lease; let it go now rather
		// than after its TTL.
		_ = b.Revoke(ctx, id)
		return nil, fmt.Errorf("session: first keep-alive of lease %d: %w", id, err)
	}
	s := &Session{
		b:        b,
		clock:    cfg.clock,
		log:      cfg.log.With(zap.Int64("lease", int64(id))),
		lease:    id,
		ttl:      ttl,
		interval: cfg.interval,
		margin:   cfg.margin,
		deadline: sent.Add(ttl - cfg.margin),
		suspend:  cfg.suspend,
		done:     make(chan struct{}),
		stop:     make(chan struct{}),
		loopDone: make(chan struct{}),
	}
	// Arm the timers before the loop starts, so that a fake clock advanced
	// right after New already fires them.
	s.suspendDeadline = sentSuspend + ttl - cfg.margin
	fence := s.clock.NewTimer(s.deadline.Sub(s.clock.Now()))
	tick := s.clock.NewTimer(s.interval)
	go s.run(fence, tick)
	s.log.Debug("session started", zap.Duration("ttl", ttl), zap.Time("fence_deadline", s.deadline))
	return s, nil
}

// Lease returns the session's lease; keys put with it vanish when the
// session's lease ends.
func (s *Session) Lease() kv.LeaseID { return s.lease }

// TTL returns the lease TTL the backend granted (at least the requested one).
func (s *Session) TTL() time.Duration { return s.ttl }

// Done is closed when the session ends, for whatever reason (see Err). It
// closes at the fence deadline at the latest when renewals stop succeeding.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err returns nil while the session is alive, then why it ended: an error
// wrapping ErrExpired (the backend says the lease is gone), ErrFenced (no
// keep-alive acked before the fence deadline) or ErrClosed (Close or
// Abandon). The first reason sticks.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// PastDeadline reports whether the session is past its fence deadline at
// now on its clock, or on its suspend clock (see WithSuspendClock): a
// process that was suspended may wake with its timers not yet fired but
// its lease already expired on the server.
func (s *Session) PastDeadline(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !now.Before(s.deadline) {
		return true
	}
	return s.suspend != nil && s.suspend() >= s.suspendDeadline
}

// FenceDeadline returns the send time of the last acknowledged keep-alive +
// TTL − fence margin: the instant Done closes with ErrFenced unless a newer
// keep-alive is acknowledged first.
func (s *Session) FenceDeadline() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.deadline
}

// Close stops the keep-alive and revokes the lease, so keys on it go at
// once. It is idempotent; a lease that is already gone is not an error. If
// the revoke fails (ctx done, backend unreachable) the lease still expires
// on the server after its TTL, and Close returns the error.
func (s *Session) Close(ctx context.Context) error {
	s.halt()
	s.revokeMu.Lock()
	defer s.revokeMu.Unlock()
	if s.revoked {
		return nil
	}
	if err := s.b.Revoke(ctx, s.lease); err != nil && !errors.Is(err, kv.ErrLeaseNotFound) {
		// Not marked revoked: a later Close retries.
		return fmt.Errorf("session: revoke lease %d: %w", s.lease, err)
	}
	s.revoked = true
	return nil
}

// Abandon stops the keep-alive without revoking the lease: the lease
// expires on the server after its TTL, as a crashed process's would.
func (s *Session) Abandon() { s.halt() }

// halt stops the loop and waits for it.
func (s *Session) halt() {
	s.stopOnce.Do(func() { close(s.stop) })
	<-s.loopDone
}

// Fence ends the session at once with err (wrapped in ErrFenced unless it
// already wraps one of this package's errors): its owner learned, other
// than from its keep-alives, that it must stop (its session key was deleted
// or marked evicted). The lease is neither renewed nor revoked; Close still
// revokes it. It is idempotent; the first reason sticks.
func (s *Session) Fence(err error) {
	if err == nil {
		err = ErrFenced
	}
	s.log.Warn("session fenced by its owner", zap.Error(err))
	s.end(err)
	s.stopOnce.Do(func() { close(s.stop) })
}

// end records why the session ended and closes Done; the first call wins.
func (s *Session) end(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	s.err = err
	close(s.done)
}

type keepAliveResult struct {
	sent        time.Time
	sentSuspend time.Duration
	ttl         time.Duration
	err         error
}

// run renews the lease every interval and fences the session at the
// deadline. One keep-alive is in flight at a time; it runs on its own
// goroutine so the fence timer fires on time even while it hangs.
func (s *Session) run(fence, tick clockwork.Timer) {
	defer close(s.loopDone)
	defer fence.Stop()
	defer tick.Stop()
	kaCtx, kaCancel := context.WithCancel(context.Background())
	var inflight chan keepAliveResult
	defer func() {
		kaCancel()
		if inflight != nil {
			<-inflight
		}
	}()
	retry := max(s.interval/4, time.Millisecond)
	// The suspend check polls on Go's real timers: after a resume, the first
	// poll sees the suspend clock past the deadline.
	var poll <-chan time.Time
	if s.suspend != nil {
		t := time.NewTicker(suspendPoll(s.margin))
		defer t.Stop()
		poll = t.C
	}

	for {
		select {
		case <-s.stop:
			s.end(ErrClosed)
			return

		case <-poll:
			s.mu.Lock()
			past, deadline := s.suspend() >= s.suspendDeadline, s.deadline
			s.mu.Unlock()
			if past {
				s.log.Warn("session fenced: past the fence deadline on the suspend clock (was the process or system suspended?)",
					zap.Time("fence_deadline", deadline))
				s.end(fmt.Errorf("%w: lease %d, deadline %s passed during a suspend", ErrFenced, s.lease, stamp(deadline)))
				return
			}

		case <-fence.Chan():
			s.mu.Lock()
			deadline := s.deadline
			s.mu.Unlock()
			if s.clock.Now().Before(deadline) {
				continue // a stale fire from before the last Reset
			}
			s.log.Warn("session fenced: no keep-alive acked before the fence deadline",
				zap.Time("fence_deadline", deadline))
			s.end(fmt.Errorf("%w: lease %d, deadline %s", ErrFenced, s.lease, stamp(deadline)))
			return

		case <-tick.Chan():
			if inflight != nil {
				tick.Reset(s.interval)
				continue
			}
			inflight = make(chan keepAliveResult, 1)
			sent := s.clock.Now()
			var sentSuspend time.Duration
			if s.suspend != nil {
				sentSuspend = s.suspend()
			}
			go func(ch chan<- keepAliveResult) {
				ttl, err := s.b.KeepAliveOnce(kaCtx, s.lease)
				ch <- keepAliveResult{sent: sent, sentSuspend: sentSuspend, ttl: ttl, err: err}
			}(inflight)

		case r := <-inflight:
			inflight = nil
			if r.err != nil {
				if errors.Is(r.err, kv.ErrLeaseNotFound) {
					s.log.Warn("session lease expired", zap.Error(r.err))
					s.end(fmt.Errorf("%w: lease %d: %w", ErrExpired, s.lease, r.err))
					return
				}
				s.log.Info("keep-alive failed; retrying", zap.Error(r.err))
				tick.Reset(retry)
				continue
			}
			now := s.clock.Now()
			s.mu.Lock()
			if !now.Before(s.deadline) || (s.suspend != nil && s.suspend() >= s.suspendDeadline) {
				// Acked too late: the owner may already be acting on the
				// fence, so the session must not come back to life.
				deadline := s.deadline
				s.mu.Unlock()
				s.end(fmt.Errorf("%w: lease %d, deadline %s (keep-alive acked late)", ErrFenced, s.lease, stamp(deadline)))
				return
			}
			deadline := s.deadline
			if d := r.sent.Add(r.ttl - s.margin); d.After(deadline) {
				deadline = d
			}
			s.mu.Unlock()
			// Re-arm before publishing the deadline, so whoever sees the new
			// deadline (a test advancing a fake clock) sees armed timers.
			fence.Reset(deadline.Sub(now))
			tick.Reset(s.interval)
			s.mu.Lock()
			s.deadline = deadline
			if d := r.sentSuspend + r.ttl - s.margin; s.suspend != nil && d > s.suspendDeadline {
				s.suspendDeadline = d
			}
			s.mu.Unlock()
		}
	}
}

// stamp formats t for a message: ISO-8601 in UTC, without Go's monotonic
// clock reading (the "m=+..." suffix).
func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
