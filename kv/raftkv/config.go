package raftkv

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/jonboulle/clockwork"
	"go.uber.org/zap"
)

// ErrInvalidConfig: Open, StartCluster or an Option got a value it cannot
// use. Returned before anything is started or written.
var ErrInvalidConfig = errors.New("raftkv: invalid config")

// DefaultMaxTxnOps is etcd's default limit on the entries of a Txn branch.
const DefaultMaxTxnOps = 128

// DefaultMaxTxnBytes is etcd's default --max-request-bytes (1.5 MiB): the
// largest kv.TxnBytes of a Txn a node accepts unless WithMaxTxnBytes says
// otherwise.
const DefaultMaxTxnBytes = 3 << 19

// MaxTxnBytesLimit caps WithMaxTxnBytes. A Txn is one raft log entry: it
// is written whole into one bolt value (bolt's limit is 2 GiB), gob-encoded
// whole when forwarded, and sent in one AppendEntries that holds up the
// heartbeats behind it on hashicorp/raft's pipeline. 64 MiB keeps an entry
// far below the first two and its send time at loopback and LAN speeds
// well under the default heartbeat timeout (1 s).
const MaxTxnBytesLimit = 64 << 20

// Peer is one voting member of a cluster: its stable ID and the address
// other nodes reach it at (raft traffic and forwarded requests share it).
type Peer struct {
	ID   string
	Addr string
}

// Config says who a node is and where it keeps its state.
type Config struct {
	// ID is the node's stable name, unique in its cluster. Required.
	ID string
	// Addr is the TCP host:port the node listens on, for raft and for the
	// requests other nodes forward to it. Port 0 picks a free port
	// (Node.Addr reports it). Required.
	Addr string
	// Advertise is the address other nodes dial (default: the bound
	// address). It must name a reachable host, not 0.0.0.0 or [::].
	Advertise string
	// Dir holds the raft log, the stable store and the snapshots. Required.
	// A Dir that already holds state restarts the node from it.
	Dir string
	// Bootstrap starts a new cluster of Peers (this node alone when Peers
	// is empty) when Dir holds no state; it is ignored when Dir holds state.
	// A node that neither bootstraps nor has state waits to be joined.
	Bootstrap bool
	// Peers is the initial membership for Bootstrap, this node included.
	Peers []Peer
}

func (c *Config) validate() error {
	switch {
	case c.ID == "":
		return fmt.Errorf("%w: empty ID", ErrInvalidConfig)
	case c.Addr == "":
		return fmt.Errorf("%w: empty Addr", ErrInvalidConfig)
	case c.Dir == "":
		return fmt.Errorf("%w: empty Dir", ErrInvalidConfig)
	case len(c.Peers) > 0 && !c.Bootstrap:
		return fmt.Errorf("%w: Peers without Bootstrap", ErrInvalidConfig)
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return fmt.Errorf("%w: Addr %q: %w", ErrInvalidConfig, c.Addr, err)
	}
	if c.Advertise != "" {
		if err := checkAdvertise(c.Advertise); err != nil {
			return err
		}
	}
	self, ids, addrs := false, map[string]bool{}, map[string]bool{}
	for _, p := range c.Peers {
		if p.ID == "" || p.Addr == "" {
			return fmt.Errorf("%w: peer %+v needs an ID and an Addr", ErrInvalidConfig, p)
		}
		if ids[p.ID] || addrs[p.Addr] {
			return fmt.Errorf("%w: duplicate peer %+v", ErrInvalidConfig, p)
		}
		ids[p.ID], addrs[p.Addr] = true, true
		self = self || p.ID == c.ID
	}
	if len(c.Peers) > 0 && !self {
		return fmt.Errorf("%w: Peers do not include this node %q", ErrInvalidConfig, c.ID)
	}
	return nil
}

// checkAdvertise rejects addresses other nodes cannot dial.
func checkAdvertise(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%w: advertise address %q: %w", ErrInvalidConfig, addr, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) || port == "0" {
		return fmt.Errorf("%w: advertise address %q is not dialable; set Config.Advertise", ErrInvalidConfig, addr)
	}
	return nil
}

// Option configures Open and StartCluster.
type Option func(*options)

type options struct {
	log            *zap.Logger
	clock          clockwork.Clock
	maxTxnOps      int
	maxTxnBytes    int
	minLeaseTTL    time.Duration
	requestTimeout time.Duration
	leaseCheck     time.Duration

	heartbeat, election, leaderLease time.Duration
	commitTimeout                    time.Duration

	snapshotThreshold uint64
	trailingLogs      uint64
	snapshotInterval  time.Duration

	noFsync bool

	tls    *tls.Config // nil: plaintext
	tlsSet bool        // WithTLS was given, even with nil
}

func defaultOptions() options {
	d := raft.DefaultConfig()
	return options{
		log:               zap.NewNop(),
		clock:             clockwork.NewRealClock(),
		maxTxnOps:         DefaultMaxTxnOps,
		maxTxnBytes:       DefaultMaxTxnBytes,
		minLeaseTTL:       time.Second,
		requestTimeout:    10 * time.Second,
		leaseCheck:        50 * time.Millisecond,
		heartbeat:         d.HeartbeatTimeout,
		election:          d.ElectionTimeout,
		leaderLease:       d.LeaderLeaseTimeout,
		commitTimeout:     d.CommitTimeout,
		snapshotThreshold: d.SnapshotThreshold,
		trailingLogs:      d.TrailingLogs,
		snapshotInterval:  d.SnapshotInterval,
	}
}

// WithLogger sets the logger (default zap.NewNop()). Raft's own log lines
// at warning level and above go to it too, named "raft".
func WithLogger(l *zap.Logger) Option { return func(o *options) { o.log = l } }

// WithClock sets the clock of lease deadlines, which only the leader keeps
// (default: the real clock). Raft's own timers always use the real clock.
func WithClock(c clockwork.Clock) Option { return func(o *options) { o.clock = c } }

// WithMaxTxnOps sets the largest number of entries in each of a Txn's If,
// Then and Else lists (default 128). Every node of a cluster should use the
// same value: the node that receives a Txn checks it.
func WithMaxTxnOps(n int) Option { return func(o *options) { o.maxTxnOps = n } }

// WithMaxTxnBytes sets the largest kv.TxnBytes of a Txn, keys counted with
// the Client's root (default DefaultMaxTxnBytes, at most MaxTxnBytesLimit).
// Every node of a cluster should use the same value: the node that
// receives a Txn checks it, and the leader checks a forwarded one again.
func WithMaxTxnBytes(n int) Option { return func(o *options) { o.maxTxnBytes = n } }

// WithMinLeaseTTL sets the smallest lease TTL; Grant raises shorter ones to
// it (default 1s). A lease shorter than a leader election can expire
// while its holder is still trying to reach the new leader.
func WithMinLeaseTTL(d time.Duration) Option { return func(o *options) { o.minLeaseTTL = d } }

// WithRequestTimeout bounds how long a call waits for a leader, and for a
// write to commit, when its context has no earlier deadline (default 10s).
// Waiting out the bound fails with kv.ErrUnavailable, or with
// kv.ErrUnknownOutcome for a write that was already proposed.
func WithRequestTimeout(d time.Duration) Option { return func(o *options) { o.requestTimeout = d } }

// WithRaftTimeouts sets raft's heartbeat, election and leader-lease
// timeouts (default raft's 1s, 1s, 500ms; StartCluster uses 600ms, 600ms,
// 500ms for loopback). raft requires leaderLease <= heartbeat <= election.
func WithRaftTimeouts(heartbeat, election, leaderLease time.Duration) Option {
	return func(o *options) { o.heartbeat, o.election, o.leaderLease = heartbeat, election, leaderLease }
}

// WithSnapshotThreshold sets how many log entries since the last snapshot
// make raft take a new one (default raft's 8192).
func WithSnapshotThreshold(n uint64) Option { return func(o *options) { o.snapshotThreshold = n } }

// WithTrailingLogs sets how many log entries a snapshot leaves behind, for
// followers that lag a little (default raft's 10240). A follower further
// behind is sent the whole snapshot (InstallSnapshot).
func WithTrailingLogs(n uint64) Option { return func(o *options) { o.trailingLogs = n } }

// WithSnapshotInterval sets how often raft checks whether to snapshot
// (default raft's 120s, with jitter).
func WithSnapshotInterval(d time.Duration) Option { return func(o *options) { o.snapshotInterval = d } }

// WithUnsafeNoFsync(true) skips the fsync after each write to the raft
// log: a machine crash can lose acknowledged writes. For tests and
// benchmarks only.
func WithUnsafeNoFsync(on bool) Option { return func(o *options) { o.noFsync = on } }

// WithTLS runs every connection between nodes, raft traffic and forwarded
// requests alike, over mutual TLS. cfg must hold the node's certificate
// (Certificates, at least one) and the cluster's CA pool (RootCAs,
// ClientCAs, or both; either stands in for the other when unset). Each
// node verifies the certificate of every node that connects to it
// (tls.RequireAndVerifyClientCert against ClientCAs) and of every node it
// dials (against RootCAs, with the host of the dialed address as the
// server name unless cfg.ServerName is set), so a certificate must carry
// the host its node advertises (an IP SAN for an IP address) and be valid
// for both server and client authentication. A node without a certificate
// from the cluster's CA can neither join nor forward requests. Open clones
// cfg: later changes to it have no effect. Errors (ErrInvalidConfig, from
// Open): a nil cfg, no certificate, no CA pool, InsecureSkipVerify.
func WithTLS(cfg *tls.Config) Option {
	return func(o *options) { o.tls, o.tlsSet = cfg, true }
}

func (o *options) validate() error {
	switch {
	case o.log == nil:
		return fmt.Errorf("%w: nil logger", ErrInvalidConfig)
	case o.clock == nil:
		return fmt.Errorf("%w: nil clock", ErrInvalidConfig)
	case o.maxTxnOps <= 0:
		return fmt.Errorf("%w: max txn ops %d <= 0", ErrInvalidConfig, o.maxTxnOps)
	case o.maxTxnBytes <= 0 || o.maxTxnBytes > MaxTxnBytesLimit:
		return fmt.Errorf("%w: max txn bytes %d not in (0, %d]", ErrInvalidConfig, o.maxTxnBytes, MaxTxnBytesLimit)
	case o.minLeaseTTL < 0:
		return fmt.Errorf("%w: min lease TTL %v < 0", ErrInvalidConfig, o.minLeaseTTL)
	case o.requestTimeout <= 0:
		return fmt.Errorf("%w: request timeout %v <= 0", ErrInvalidConfig, o.requestTimeout)
	case o.trailingLogs == 0 && o.snapshotThreshold == 0:
		return fmt.Errorf("%w: snapshot threshold and trailing logs both 0", ErrInvalidConfig)
	}
	if o.tlsSet {
		if err := validateTLS(o.tls); err != nil {
			return err
		}
	}
	// raft validates the rest (timeout ordering and minimums) in one place.
	if err := raft.ValidateConfig(o.raftConfig("validate")); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return nil
}

func (o *options) raftConfig(id string) *raft.Config {
	c := raft.DefaultConfig()
	c.LocalID = raft.ServerID(id)
	c.HeartbeatTimeout = o.heartbeat
	c.ElectionTimeout = o.election
	c.LeaderLeaseTimeout = o.leaderLease
	// Followers learn the commit index from the next append or heartbeat;
	// a short commit timeout keeps follower reads (read index) quick.
	c.CommitTimeout = max(time.Millisecond, min(o.commitTimeout, o.heartbeat/10))
	c.SnapshotThreshold = o.snapshotThreshold
	c.TrailingLogs = o.trailingLogs
	c.SnapshotInterval = o.snapshotInterval
	c.Logger = raftLogger(o.log)
	return c
}

// raftLogger sends raft's warnings and errors to the zap logger, and
// nothing at all when it is a no-op logger.
func raftLogger(l *zap.Logger) hclog.Logger {
	if !l.Core().Enabled(zap.WarnLevel) {
		return hclog.NewNullLogger()
	}
	return hclog.New(&hclog.LoggerOptions{
		Name:        "raft",
		Level:       hclog.Warn,
		Output:      zapWriter{l.Named("raft")},
		DisableTime: true,
	})
}

// zapWriter turns each hclog line into one zap entry.
type zapWriter struct{ l *zap.Logger }

func (w zapWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	switch {
	case strings.Contains(line, "use of closed network connection"):
		// Raft's connection handlers report every close, ours included.
		w.l.Debug(line)
	case strings.Contains(line, "[ERROR]"):
		w.l.Error(line)
	default:
		w.l.Warn(line)
	}
	return len(p), nil
}

// validateTLS checks what mutual TLS needs. A missing CA pool is refused
// rather than defaulted: crypto/tls would verify peers against the
// system's public roots, which vouch for anyone with a public certificate.
func validateTLS(c *tls.Config) error {
	switch {
	case c == nil:
		return fmt.Errorf("%w: nil TLS config", ErrInvalidConfig)
	case len(c.Certificates) == 0:
		return fmt.Errorf("%w: TLS config without a certificate", ErrInvalidConfig)
	case c.RootCAs == nil && c.ClientCAs == nil:
		return fmt.Errorf("%w: TLS config without a CA pool (RootCAs or ClientCAs)", ErrInvalidConfig)
	case c.InsecureSkipVerify:
		return fmt.Errorf("%w: TLS config with InsecureSkipVerify: peers must be verified", ErrInvalidConfig)
	}
	return nil
}

// tlsConfigs derives the listener's and the dialer's configs from the
// one given to WithTLS.
func tlsConfigs(c *tls.Config) (server, client *tls.Config) {
	server, client = c.Clone(), c.Clone()
	server.ClientAuth = tls.RequireAndVerifyClientCert
	if server.ClientCAs == nil {
		server.ClientCAs = c.RootCAs
	}
	if client.RootCAs == nil {
		client.RootCAs = c.ClientCAs
	}
	return server, client
}
