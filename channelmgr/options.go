package channelmgr

import (
	"fmt"
	"os"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Defaults (see docs/PROTOCOL.md).
const (
	DefaultSessionTTL       = 10 * time.Second
	DefaultNodeTTL          = 10 * time.Second
	DefaultWatchTimeout     = 30 * time.Second
	DefaultReleaseTimeout   = 30 * time.Second
	DefaultCheckInterval    = time.Second
	DefaultMaxMovesInFlight = 8
	DefaultBackoffBase      = time.Second
	DefaultBackoffMax       = time.Minute
	DefaultQuarantineAfter  = 3
	DefaultQuarantineBase   = 10 * time.Second
	DefaultQuarantineMax    = 5 * time.Minute
)

// Option configures New.
type Option func(*config)

type config struct {
	id               string
	addr             string
	sessionTTL       time.Duration
	nodeTTL          time.Duration
	watchTimeout     time.Duration
	releaseTimeout   time.Duration
	checkInterval    time.Duration
	policy           Policy
	maxMovesInFlight int
	budget           budget // see budget.go
	backoffBase      time.Duration
	backoffMax       time.Duration
	quarantineAfter  int
	quarantineBase   time.Duration
	quarantineMax    time.Duration
	clock            clockwork.Clock
	log              *zap.Logger
	reg              prometheus.Registerer
}

// WithID names this coordinator in the leader key (default host-pid).
func WithID(id string) Option { return func(c *config) { c.id = id } }

// WithAddr sets the address published in the leader key (default none).
func WithAddr(addr string) Option { return func(c *config) { c.addr = addr } }

// WithSessionTTL sets the TTL of the coordinator's own session lease
// (default 10s): how long a crashed leader blocks a successor. > 0.
func WithSessionTTL(d time.Duration) Option { return func(c *config) { c.sessionTTL = d } }

// WithNodeTTL sets the longest session TTL any node uses (default 10s). It
// is the wait applied where a node's own TTL is unknown: after taking over,
// the coordinator treats channels of nodes that are gone as movable only
// this long after it started leading, because its predecessor may have
// just evicted them. > 0.
//
// Where a node's TTL is known (it advertises it in its session key,
// meta.NodeSession.TTL), that node's channels wait its own TTL, shorter or
// longer. A node that advertises a TTL longer than WithNodeTTL is logged
// as a warning, and from then on the longer TTL is the wait for every node
// whose TTL is unknown: the coordinator never waits less than a TTL it has
// seen in use.
func WithNodeTTL(d time.Duration) Option { return func(c *config) { c.nodeTTL = d } }

// WithWatchTimeout sets how long a ToWatch may go without any change
// (a Progress bump is a change) before it is released and placed again
// (default 30s). > 0.
func WithWatchTimeout(d time.Duration) Option { return func(c *config) { c.watchTimeout = d } }

// WithReleaseTimeout sets how long a ToRelease may go unanswered before the
// node is evicted (default 30s). > 0.
func WithReleaseTimeout(d time.Duration) Option { return func(c *config) { c.releaseTimeout = d } }

// WithCheckInterval sets the period of the timeout and balance checks
// (default 1s). > 0.
func WithCheckInterval(d time.Duration) Option { return func(c *config) { c.checkInterval = d } }

// WithPolicy sets the placement and balance policy (default LeastLoaded()).
// Not nil.
func WithPolicy(p Policy) Option { return func(c *config) { c.policy = p } }

// WithMaxMovesInFlight caps concurrent balance moves (default 8). >= 1.
// Failover and drains are not capped.
func WithMaxMovesInFlight(n int) Option { return func(c *config) { c.maxMovesInFlight = n } }

// WithBackoff sets the delay before a channel whose attempt failed is
// placed again: base * 2^(attempts-1), at most max (defaults 1s, 1m).
// 0 < base <= max.
func WithBackoff(base, max time.Duration) Option {
	return func(c *config) { c.backoffBase, c.backoffMax = base, max }
}

// WithQuarantine sets node health (defaults 3, 10s, 5m): after failures
// Watch failures or timeouts of distinct channels on one node with no
// success in between (or one failed Release), the node is quarantined for
// base * 2^(n-1), at most max, where n counts its quarantines since its
// last success. A quarantined node gets no placements and no balance moves;
// when the time runs out it takes one channel (a probe), and the first
// success makes it healthy again. failures >= 1, 0 < base <= max.
func WithQuarantine(failures int, base, max time.Duration) Option {
	return func(c *config) { c.quarantineAfter, c.quarantineBase, c.quarantineMax = failures, base, max }
}

// WithClock sets the clock of every timer (default the real clock). Not nil.
func WithClock(clk clockwork.Clock) Option { return func(c *config) { c.clock = clk } }

// WithLogger sets the logger (default zap.NewNop(); nil means the default).
func WithLogger(l *zap.Logger) Option { return func(c *config) { c.log = l } }

// WithRegisterer registers the coordinator's metrics (chanwatch_coordinator_*)
// with r (default nil: no metrics). New fails if registration does, e.g. for
// a second Coordinator on the same Registerer: wrap it with
// prometheus.WrapRegistererWith to tell them apart.
func WithRegisterer(r prometheus.Registerer) Option { return func(c *config) { c.reg = r } }

func defaultID() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "coord"
	}
	return fmt.Sprintf("%s-%d", h, os.Getpid())
}

func (c *config) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidOption, fmt.Sprintf(format, args...))
	}
	switch {
	case c.id == "":
		return bad("empty ID")
	case c.sessionTTL <= 0:
		return bad("session TTL %v must be > 0", c.sessionTTL)
	case c.nodeTTL <= 0:
		return bad("node TTL %v must be > 0", c.nodeTTL)
	case c.watchTimeout <= 0:
		return bad("watch timeout %v must be > 0", c.watchTimeout)
	case c.releaseTimeout <= 0:
		return bad("release timeout %v must be > 0", c.releaseTimeout)
	case c.checkInterval <= 0:
		return bad("check interval %v must be > 0", c.checkInterval)
	case c.policy == nil:
		return bad("nil policy")
	case c.maxMovesInFlight < 1:
		return bad("max moves in flight %d must be >= 1", c.maxMovesInFlight)
	case c.backoffBase <= 0 || c.backoffMax < c.backoffBase:
		return bad("backoff base %v, max %v: want 0 < base <= max", c.backoffBase, c.backoffMax)
	case c.quarantineAfter < 1:
		return bad("quarantine after %d failures: want >= 1", c.quarantineAfter)
	case c.quarantineBase <= 0 || c.quarantineMax < c.quarantineBase:
		return bad("quarantine base %v, max %v: want 0 < base <= max", c.quarantineBase, c.quarantineMax)
	case c.clock == nil:
		return bad("nil clock")
	}
	if err := c.budget.validate(); err != nil {
		return bad("%v", err)
	}
	return nil
}

// backoff returns the wait before the next placement of a channel that
// failed attempts times.
func (c *config) backoff(attempts int) time.Duration {
	if attempts <= 0 {
		return 0
	}
	d := c.backoffBase
	for i := 1; i < attempts && d < c.backoffMax; i++ {
		d *= 2
	}
	return min(d, c.backoffMax)
}
