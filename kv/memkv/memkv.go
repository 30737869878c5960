package memkv

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/jonboulle/clockwork"
	"go.uber.org/zap"
)

// firstLeaseID is the first lease ID a KV hands out: far from 0 and from
// small counters, so a test that confuses a lease with a revision fails.
const firstLeaseID kv.LeaseID = 1<<52 + 1

// DefaultMaxTxnOps is etcd's default limit on the entries of a Txn branch.
const DefaultMaxTxnOps = 128

// DefaultMaxTxnBytes is etcd's default --max-request-bytes (1.5 MiB), so
// that what memkv accepts etcd accepts too.
const DefaultMaxTxnBytes = 3 << 19

// Option configures New.
type Option func(*config)

type config struct {
	clock       clockwork.Clock
	maxTxnOps   int
	maxTxnBytes int
	log         *zap.Logger
	retain      int64
}

// WithClock sets the clock of lease deadlines (default: the real clock).
// A clockwork.FakeClock's Advance expires leases at once. New panics on nil.
func WithClock(c clockwork.Clock) Option { return func(cfg *config) { cfg.clock = c } }

// WithMaxTxnOps sets the largest number of entries in each of a Txn's If,
// Then and Else lists (default 128). New panics when n <= 0.
func WithMaxTxnOps(n int) Option { return func(cfg *config) { cfg.maxTxnOps = n } }

// WithMaxTxnBytes sets MaxTxnBytes, the largest kv.TxnBytes of a Txn
// (default DefaultMaxTxnBytes); a larger Txn fails with kv.ErrTxnTooLarge.
// Tests set a small one to exercise the limit cheaply. New panics when
// n <= 0.
func WithMaxTxnBytes(n int) Option { return func(cfg *config) { cfg.maxTxnBytes = n } }

// WithLogger sets the logger (default zap.NewNop(); nil means the default).
func WithLogger(l *zap.Logger) Option { return func(cfg *config) { cfg.log = l } }

// WithAutoCompact keeps only the last retain revisions of history,
// compacting after every write (default 0: never compact by itself). New
// panics when retain < 0.
func WithAutoCompact(retain int64) Option { return func(cfg *config) { cfg.retain = retain } }

// shared is what every handle of one KV shares: the store, the clock and
// the lease deadlines.
type shared struct {
	store       *Store
	clock       clockwork.Clock
	log         *zap.Logger
	maxTxnOps   int
	maxTxnBytes int
	retain      int64

	leaseMu     sync.Mutex // orders lease calls and expiry; taken before the store's lock
	nextLeaseID kv.LeaseID
	deadlines   map[kv.LeaseID]time.Time

	wake     chan struct{} // pokes the expiry loop
	stop     chan struct{} // closed by the root's Close
	loopDone chan struct{}
	stopOnce sync.Once
}

// KV is the in-memory kv.Backend: a Store plus lease deadlines on a clock.
// Each value is one handle on a shared store (see NewClient), with its own
// closed state and fault hooks. All methods are safe for concurrent use.
type KV struct {
	sh   *shared
	root bool

	mu      sync.Mutex
	closed  bool
	closeCh chan struct{} // closed by Close
	failN   int
	// failTxnN and failTxnErr: FailNextTxn.
	failTxnN   int
	failTxnErr error
	failErr    error
	hang       *hang
	watches    *watchGroup
}

var _ kv.Backend = (*KV)(nil)

// New returns a KV on a fresh Store, with its lease-expiry goroutine
// running. It panics on an invalid option value (nil clock, max txn ops
// or bytes <= 0, negative auto-compact retention): that is a programming error. Close
// the returned KV to stop the goroutine.
func New(opts ...Option) *KV {
	cfg := config{clock: clockwork.NewRealClock(), maxTxnOps: DefaultMaxTxnOps, maxTxnBytes: DefaultMaxTxnBytes}
	for _, o := range opts {
		o(&cfg)
	}
	switch {
	case cfg.clock == nil:
		panic("memkv: WithClock(nil)")
	case cfg.maxTxnOps <= 0:
		panic(fmt.Sprintf("memkv: WithMaxTxnOps(%d): must be > 0", cfg.maxTxnOps))
	case cfg.maxTxnBytes <= 0:
		panic(fmt.Sprintf("memkv: WithMaxTxnBytes(%d): must be > 0", cfg.maxTxnBytes))
	case cfg.retain < 0:
		panic(fmt.Sprintf("memkv: WithAutoCompact(%d): must be >= 0", cfg.retain))
	}
	if cfg.log == nil {
		cfg.log = zap.NewNop()
	}
	sh := &shared{
		store:       NewStore(),
		clock:       cfg.clock,
		log:         cfg.log,
		maxTxnOps:   cfg.maxTxnOps,
		maxTxnBytes: cfg.maxTxnBytes,
		retain:      cfg.retain,
		nextLeaseID: firstLeaseID,
		deadlines:   make(map[kv.LeaseID]time.Time),
		wake:        make(chan struct{}, 1),
		stop:        make(chan struct{}),
		loopDone:    make(chan struct{}),
	}
	go sh.expiryLoop()
	return newHandle(sh, true)
}

func newHandle(sh *shared, root bool) *KV {
	return &KV{sh: sh, root: root, closeCh: make(chan struct{}), watches: newWatchGroup()}
}

// NewClient returns another handle on the same store, leases and clock, as
// a second process would have. Closing it ends only its own calls and
// watches (with kv.ErrClosed): this is how tests simulate a process crash.
// Its leases live on until they expire, as a crashed process's would.
func (m *KV) NewClient() *KV { return newHandle(m.sh, false) }

// Store returns the shared Store, for tests and tools that inspect state.
func (m *KV) Store() *Store { return m.sh.store }

// Close closes this handle: its calls fail with kv.ErrClosed and its open
// watches end with kv.ErrClosed. Closing the handle New returned also
// closes the store (every handle's watches end, every call fails) and stops
// the expiry goroutine, waiting for it. Close is idempotent.
func (m *KV) Close() error {
	m.mu.Lock()
	if !m.closed {
		m.closed = true
		close(m.closeCh)
		m.watches.end(kv.ErrClosed)
	}
	m.mu.Unlock()
	if m.root {
		m.sh.stopOnce.Do(func() {
			close(m.sh.stop)
			<-m.sh.loopDone
			m.sh.store.Close()
			m.sh.log.Debug("memkv closed", zap.Int64("revision", m.sh.store.Rev()))
		})
	}
	return nil
}

// Get returns key and the revision of the read; see kv.KV.
func (m *KV) Get(ctx context.Context, key string) (kv.KeyValue, int64, error) {
	if err := m.begin(ctx, false); err != nil {
		return kv.KeyValue{}, 0, err
	}
	return m.sh.store.Get(key)
}

// List returns the keys with prefix, sorted, and the revision of the read;
// see kv.KV.
func (m *KV) List(ctx context.Context, prefix string) ([]kv.KeyValue, int64, error) {
	if err := kv.ValidatePrefix(prefix); err != nil {
		return nil, 0, err
	}
	if err := m.begin(ctx, false); err != nil {
		return nil, 0, err
	}
	kvs, rev := m.sh.store.List(prefix)
	return kvs, rev, nil
}

// Compact discards history up to and including rev; see kv.Compactor.
func (m *KV) Compact(ctx context.Context, rev int64) error {
	if err := m.begin(ctx, false); err != nil {
		return err
	}
	return m.sh.store.Compact(rev)
}

// autoCompact keeps the last retain revisions (WithAutoCompact).
func (sh *shared) autoCompact() {
	if sh.retain == 0 {
		return
	}
	s := sh.store
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.rev - sh.retain; !s.closed && c > s.compactRev {
		s.compactLocked(c)
	}
}
