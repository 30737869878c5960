package etcdkv

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/chanwatch/chanwatch/kv"
)

// DefaultMaxTxnOps is etcd's default --max-txn-ops.
const DefaultMaxTxnOps = 128

// DefaultListPageSize is how many keys List reads per request.
const DefaultListPageSize = 1000

// DefaultMaxRequestBytes is etcd's default --max-request-bytes (1.5 MiB):
// the server refuses a larger request with "etcdserver: request is too
// large".
const DefaultMaxRequestBytes = 3 << 19

// DefaultMaxCallSendMsgSize is clientv3's default Config.MaxCallSendMsgSize
// (2 MiB): the client refuses to send a larger request (gRPC
// ResourceExhausted, "trying to send message larger than max").
const DefaultMaxCallSendMsgSize = 2 << 20

// requestReserve is what MaxTxnBytes keeps back from the smaller of the two
// limits for the parts of a request kv.TxnBytes does not count: the request
// header and framing (reserveFixed) and, per entry, the root prefix on its
// key and protobuf framing beyond kv.TxnEntryOverhead (reservePerEntry).
const (
	reserveFixed    = 4 << 10
	reservePerEntry = 16
)

type options struct {
	maxTxnOps       int
	maxRequestBytes int
	maxSendMsgSize  int
	pageSize        int
	noStream        bool
	logger          *zap.Logger
}

// Option configures New.
type Option func(*options)

// WithMaxTxnOps sets the largest Txn branch the KV accepts (default 128). It
// must not exceed the server's --max-txn-ops, or large Txns that pass local
// validation are rejected by the server (still with kv.ErrTxnTooLarge).
func WithMaxTxnOps(n int) Option { return func(o *options) { o.maxTxnOps = n } }

// WithMaxRequestBytes tells the KV the server's --max-request-bytes
// (default DefaultMaxRequestBytes). MaxTxnBytes is derived from the smaller
// of it and WithMaxCallSendMsgSize. Set it when the cluster runs with a
// non-default limit; a larger value than the server's only means that
// oversized Txns are refused by the server (still with kv.ErrTxnTooLarge)
// instead of locally.
func WithMaxRequestBytes(n int) Option { return func(o *options) { o.maxRequestBytes = n } }

// WithMaxCallSendMsgSize tells the KV the client's Config.MaxCallSendMsgSize
// (default DefaultMaxCallSendMsgSize, clientv3's default; clientv3 does not
// expose the value of a given client, so pass the one cli was built with).
func WithMaxCallSendMsgSize(n int) Option { return func(o *options) { o.maxSendMsgSize = n } }

// WithListPageSize sets how many keys List reads per request when it pages
// (default 1000; see WithRangeStream). Smaller pages keep each response
// small; List still returns one revision.
func WithListPageSize(n int) Option { return func(o *options) { o.pageSize = n } }

// WithRangeStream sets whether List and ListPages read with etcd's
// RangeStream (etcd 3.7 and later; default true). A stream's chunks are
// read at one revision without the count of the rest of the range that
// every paged request makes the server compute, so a list of n keys costs
// O(n) on the server where pages of p keys cost O(n*n/p): 2,000,000 keys in
// pages of 1,000 is 2,000 walks of the index. A server that does not serve
// RangeStream (etcd before 3.7, a proxy) answers Unimplemented, after which
// this KV pages, as it does with false, and as it does for the rest of a
// List whose stream's revision is compacted.
func WithRangeStream(on bool) Option { return func(o *options) { o.noStream = !on } }

// WithLogger sets the logger (default zap.NewNop()).
func WithLogger(lg *zap.Logger) Option { return func(o *options) { o.logger = lg } }

// KV is a kv.Backend on an etcd cluster, confined to one root. Its methods
// are safe for concurrent use.
type KV struct {
	cli         *clientv3.Client
	prefix      string // root + "/"
	maxTxnOps   int
	maxTxnBytes int
	pageSize    int
	logger      *zap.Logger
	// noStream: List pages (WithRangeStream(false), or the server answered
	// a RangeStream with Unimplemented).
	noStream atomic.Bool

	// closed is cancelled by Close; every call and watch derives from it.
	closed context.Context
	close  context.CancelFunc
}

var _ kv.Backend = (*KV)(nil)

// New returns a KV on cli whose keys live under root+"/". root must be
// non-empty once trailing '/' are trimmed. The KV does not own cli: Close
// leaves it open, and the caller must keep it open while the KV is in use.
func New(cli *clientv3.Client, root string, opts ...Option) (*KV, error) {
	o := options{maxTxnOps: DefaultMaxTxnOps, maxRequestBytes: DefaultMaxRequestBytes,
		maxSendMsgSize: DefaultMaxCallSendMsgSize, pageSize: DefaultListPageSize, logger: zap.NewNop()}
	for _, opt := range opts {
		opt(&o)
	}
	if cli == nil {
		return nil, errors.New("etcdkv: nil client")
	}
	root = strings.TrimRight(root, "/")
	if root == "" {
		return nil, fmt.Errorf("etcdkv: %w: empty root", kv.ErrInvalidKey)
	}
	if o.maxTxnOps <= 0 {
		return nil, fmt.Errorf("etcdkv: max txn ops %d must be > 0", o.maxTxnOps)
	}
	if o.maxRequestBytes <= 0 || o.maxSendMsgSize <= 0 {
		return nil, fmt.Errorf("etcdkv: max request bytes %d and max send msg size %d must be > 0", o.maxRequestBytes, o.maxSendMsgSize)
	}
	maxTxnBytes := min(o.maxRequestBytes, o.maxSendMsgSize) - reserveFixed - 3*o.maxTxnOps*(len(root)+1+reservePerEntry)
	if maxTxnBytes < 4<<10 {
		return nil, fmt.Errorf("etcdkv: request limit %d bytes leaves %d for a txn's keys and values (root %q, %d ops): too small",
			min(o.maxRequestBytes, o.maxSendMsgSize), maxTxnBytes, root, o.maxTxnOps)
	}
	if o.pageSize <= 0 {
		return nil, fmt.Errorf("etcdkv: list page size %d must be > 0", o.pageSize)
	}
	if o.logger == nil {
		return nil, errors.New("etcdkv: nil logger")
	}
	closed, closeFn := context.WithCancel(context.Background())
	k := &KV{
		cli:         cli,
		prefix:      root + "/",
		maxTxnOps:   o.maxTxnOps,
		maxTxnBytes: maxTxnBytes,
		pageSize:    o.pageSize,
		logger:      o.logger.With(zap.String("root", root)),
		closed:      closed,
		close:       closeFn,
	}
	k.noStream.Store(o.noStream)
	return k, nil
}

// MaxTxnOps returns the configured largest Txn branch (WithMaxTxnOps).
func (k *KV) MaxTxnOps() int { return k.maxTxnOps }

// MaxTxnBytes returns the largest kv.TxnBytes of a Txn this KV sends: the
// smaller of WithMaxRequestBytes and WithMaxCallSendMsgSize, less a reserve
// for the root prefix on every key and the request's framing, so that a Txn
// within it is within both limits.
func (k *KV) MaxTxnBytes() int { return k.maxTxnBytes }

// Close ends this KV: calls in flight and later fail with kv.ErrClosed, and
// open watches end with a final kv.ErrClosed response. It does not close the
// client. Close is idempotent and always returns nil.
func (k *KV) Close() error {
	k.close()
	return nil
}

// relative returns an etcd key relative to the root, as a new string of
// just that part. A key outside the root (never sent by etcd for our
// ranges) is returned whole.
func (k *KV) relative(key []byte) string {
	if len(key) >= len(k.prefix) && string(key[:len(k.prefix)]) == k.prefix {
		return string(key[len(k.prefix):])
	}
	return string(key)
}

// full returns the etcd key for a key or prefix relative to the root.
func (k *KV) full(key string) string { return k.prefix + key }

// keyValue converts an etcd key-value to the contract's, relative to the root.
// The key is copied without the root prefix, so a caller that keeps keys
// (a coordinator's view of 200,000 of them) does not keep the prefix too.
func (k *KV) keyValue(ekv *mvccpb.KeyValue) kv.KeyValue {
	return kv.KeyValue{
		Key:            k.relative(ekv.Key),
		Value:          ekv.Value,
		CreateRevision: ekv.CreateRevision,
		ModRevision:    ekv.ModRevision,
		Version:        ekv.Version,
		Lease:          kv.LeaseID(ekv.Lease),
	}
}

// call runs one request with a context that also ends when the KV closes,
// and converts its error. write marks requests that change state, whose
// outcome is unknown when they fail after being sent.
func (k *KV) call(ctx context.Context, write bool, fn func(ctx context.Context) error) error {
	if k.closed.Err() != nil {
		return errClosed
	}
	if k.cli.Ctx().Err() != nil {
		// clientv3 would retry for seconds on a closed connection.
		return fmt.Errorf("etcdkv: %w: client closed", kv.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		// Nothing was sent, so the outcome is known: not applied.
		return fmt.Errorf("etcdkv: %w", err)
	}
	opCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(k.closed, func() { cancel(kv.ErrClosed) })
	defer stop()
	return k.convertError(opCtx, fn(opCtx), write)
}
