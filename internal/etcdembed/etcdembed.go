package etcdembed

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// DefaultMaxTxnOps is etcd's default --max-txn-ops.
const DefaultMaxTxnOps = int(embed.DefaultMaxTxnOps)

// Raft timers. etcd's minimum lease TTL is 1.5 election timeouts rounded up
// to whole seconds: 2s with the defaults, 1s with the fast timers.
const (
	defaultHeartbeat = 100 * time.Millisecond
	defaultElection  = 1000 * time.Millisecond
	fastHeartbeat    = 50 * time.Millisecond
	fastElection     = 500 * time.Millisecond
)

// bindAttempts bounds the retries when a picked port is taken before etcd
// binds it.
const bindAttempts = 5

type config struct {
	logger        *zap.Logger
	heartbeat     time.Duration
	election      time.Duration
	quotaBytes    int64
	maxTxnOps     int
	unsafeNoFsync bool
	startTimeout  time.Duration
	// embedHooks run last on the embed.Config: the place for settings that
	// have no option yet (TLS, auth).
	embedHooks []func(*embed.Config)
}

func defaultConfig() config {
	return config{
		logger:       zap.NewNop(),
		heartbeat:    defaultHeartbeat,
		election:     defaultElection,
		maxTxnOps:    DefaultMaxTxnOps,
		startTimeout: 30 * time.Second,
	}
}

func (c *config) validate() error {
	if c.logger == nil {
		return errors.New("etcdembed: nil logger")
	}
	if c.heartbeat < time.Millisecond || c.heartbeat%time.Millisecond != 0 {
		return fmt.Errorf("etcdembed: heartbeat %v must be a positive whole number of milliseconds", c.heartbeat)
	}
	if c.election%time.Millisecond != 0 || c.election < 5*c.heartbeat {
		return fmt.Errorf("etcdembed: election timeout %v must be whole milliseconds and at least 5 heartbeats (%v)", c.election, 5*c.heartbeat)
	}
	if c.quotaBytes < 0 {
		return fmt.Errorf("etcdembed: negative quota %d", c.quotaBytes)
	}
	if c.maxTxnOps <= 0 {
		return fmt.Errorf("etcdembed: max txn ops %d must be > 0", c.maxTxnOps)
	}
	if c.startTimeout <= 0 {
		return fmt.Errorf("etcdembed: start timeout %v must be > 0", c.startTimeout)
	}
	return nil
}

// Option configures Start.
type Option func(*config)

// WithLogger sets the server's logger (default zap.NewNop()). Clients made by
// Server.Client log to it too.
func WithLogger(lg *zap.Logger) Option { return func(c *config) { c.logger = lg } }

// WithTimers sets the raft heartbeat interval and election timeout (etcd's
// --heartbeat-interval and --election-timeout; defaults 100ms and 1s). Both
// must be whole milliseconds and election >= 5*heartbeat. They fix etcd's
// minimum lease TTL: ceil(1.5*election) in whole seconds.
func WithTimers(heartbeat, election time.Duration) Option {
	return func(c *config) { c.heartbeat, c.election = heartbeat, election }
}

// WithFastTimers sets a 50ms heartbeat and a 500ms election timeout, which
// brings the minimum lease TTL down to 1s so tests can use 1s TTLs.
func WithFastTimers() Option { return WithTimers(fastHeartbeat, fastElection) }

// WithQuotaBytes sets the backend quota (--quota-backend-bytes; 0 means
// etcd's default of 2GiB). Writes past it fail with "database space exceeded".
func WithQuotaBytes(n int64) Option { return func(c *config) { c.quotaBytes = n } }

// WithMaxTxnOps sets the server's --max-txn-ops (default 128). A client-side
// backend must be configured with the same value (see Server.MaxTxnOps).
func WithMaxTxnOps(n int) Option { return func(c *config) { c.maxTxnOps = n } }

// WithUnsafeNoFsync turns fsync off (--unsafe-no-fsync): much faster on slow
// disks, and a crash of the machine can lose acknowledged writes. NewForTest
// turns it on.
func WithUnsafeNoFsync(on bool) Option { return func(c *config) { c.unsafeNoFsync = on } }

// WithStartTimeout bounds how long Start waits for the member to be ready
// (default 30s).
func WithStartTimeout(d time.Duration) Option { return func(c *config) { c.startTimeout = d } }

// WithEmbedConfig runs fn on the embed.Config after every other option and
// after the URLs are set, just before the server starts: the hook for
// settings without a dedicated option (TLS, auth, auto-compaction). fn must
// not change the listen or advertise URLs.
func WithEmbedConfig(fn func(*embed.Config)) Option {
	return func(c *config) { c.embedHooks = append(c.embedHooks, fn) }
}

// Server is a running single-member etcd. Its methods are safe for
// concurrent use.
type Server struct {
	etcd      *embed.Etcd
	endpoints []string
	maxTxnOps int
	minTTL    time.Duration
	logger    *zap.Logger

	closeOnce sync.Once
}

// Start runs a single-member etcd with its data in dir (created if missing;
// an existing etcd data dir is reopened, with new ports) and returns once the
// member serves requests. It fails if the member is not ready within the
// start timeout.
func Start(dir string, opts ...Option) (*Server, error) {
	c := defaultConfig()
	for _, o := range opts {
		o(&c)
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	if dir == "" {
		return nil, errors.New("etcdembed: empty data dir")
	}
	var lastErr error
	for range bindAttempts {
		s, err := start(dir, &c)
		if err == nil {
			return s, nil
		}
		if !isAddrInUse(err) {
			return nil, err
		}
		// Another process took a picked port between the pick and etcd's
		// bind: listeners are made before anything is written to dir, so
		// picking again is safe.
		lastErr = err
		c.logger.Info("etcdembed: port taken, retrying", zap.Error(err))
	}
	return nil, fmt.Errorf("etcdembed: no free ports after %d attempts: %w", bindAttempts, lastErr)
}

func start(dir string, c *config) (*Server, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	clientURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[0])}
	peerURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[1])}

	cfg := embed.NewConfig()
	cfg.Name = "chanwatch"
	cfg.Dir = dir
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.InitialClusterToken = "chanwatch-embedded"
	cfg.TickMs = uint(c.heartbeat / time.Millisecond)
	cfg.ElectionMs = uint(c.election / time.Millisecond)
	cfg.QuotaBackendBytes = c.quotaBytes
	cfg.MaxTxnOps = uint(c.maxTxnOps)
	cfg.UnsafeNoFsync = c.unsafeNoFsync
	cfg.Logger = "zap"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(c.logger)
	for _, fn := range c.embedHooks {
		fn(cfg)
	}

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcdembed: start: %w", err)
	}
	timer := time.NewTimer(c.startTimeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("etcdembed: server failed while starting: %w", err)
	case <-timer.C:
		e.Close()
		return nil, fmt.Errorf("etcdembed: server not ready after %v", c.startTimeout)
	}
	// Same formula as etcdserver: 1.5 election timeouts, whole seconds up.
	electionTicks := c.election / c.heartbeat
	minTTL := time.Duration((3*electionTicks)/2) * c.heartbeat
	return &Server{
		etcd:      e,
		endpoints: []string{clientURL.String()},
		maxTxnOps: c.maxTxnOps,
		minTTL:    time.Duration(math.Ceil(minTTL.Seconds())) * time.Second,
		logger:    c.logger,
	}, nil
}

// freePorts asks the kernel for n distinct free loopback ports. They are
// released before etcd binds them, so the caller must handle losing a race.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("etcdembed: pick port: %w", err)
		}
		// Held open until all are picked, so the n ports differ.
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func isAddrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
}

// Endpoints returns the client URLs (one, http://127.0.0.1:port).
func (s *Server) Endpoints() []string { return append([]string(nil), s.endpoints...) }

// MaxTxnOps returns the server's --max-txn-ops.
func (s *Server) MaxTxnOps() int { return s.maxTxnOps }

// MinLeaseTTL returns the smallest lease TTL the server grants; shorter
// requested TTLs are raised to it.
func (s *Server) MinLeaseTTL() time.Duration { return s.minTTL }

// ClientOption adjusts the clientv3.Config that Client builds.
type ClientOption func(*clientv3.Config)

// Client returns a new client connected to this server; the caller closes
// it. By default it has a 5s dial timeout and logs to the server's logger.
func (s *Server) Client(opts ...ClientOption) (*clientv3.Client, error) {
	cfg := clientv3.Config{
		Endpoints:   s.Endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      s.logger,
	}
	for _, o := range opts {
		o(&cfg)
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcdembed: client: %w", err)
	}
	return cli, nil
}

// Close stops the server and waits until it has stopped. Clients of the
// server stay open and see it as unreachable. Close is idempotent.
func (s *Server) Close() error {
	s.closeOnce.Do(func() { s.etcd.Close() })
	return nil
}

// TB is the part of testing.TB that NewForTest uses. It is an interface of
// its own so that binaries importing this package do not link testing.
type TB interface {
	Helper()
	TempDir() string
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// NewForTest starts a server in t.TempDir() with fast timers (1s minimum
// lease TTL) and fsync off, closes it when the test ends, and fails the test
// if it cannot start. opts are applied after those defaults.
func NewForTest(t TB, opts ...Option) *Server {
	t.Helper()
	all := append([]Option{WithFastTimers(), WithUnsafeNoFsync(true)}, opts...)
	s, err := Start(t.TempDir(), all...)
	if err != nil {
		t.Fatalf("etcdembed: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}
