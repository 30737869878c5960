package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/chanwatch/chanwatch/internal/etcdembed"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/etcdkv"
)

// Options configure an Env and a Run.
type Options struct {
	// Scale multiplies every scenario's size: 1 is the full run, 0.1 the
	// quick one (--quick), 0.01 the smoke test. Default 1; must be in
	// (0, 1]. Below 0.05 the nodes' session TTL drops from 3s to 2s
	// (etcd's minimum), which shortens B2's and B7's wait before a failover.
	Scale float64
	// Endpoints of an external etcd; empty starts an embedded one.
	Endpoints []string
	// MaxTxnOps of the external etcd's --max-txn-ops (default 128).
	MaxTxnOps int
	// Root is the key prefix every scenario's own root goes under
	// (default "chanwatch-bench"). Each run uses Root/<run id>/<scenario>
	// and deletes it afterwards.
	Root string
	// Dir holds the embedded etcd's and B4's data (default: a new temp dir,
	// removed by Close).
	Dir string
	// EtcdBinary is the etcd binary B4 runs as a 3-member cluster (default:
	// etcdproc.Binary(), i.e. bin/etcd of the module, built if missing).
	EtcdBinary string
	// UnsafeNoFsync turns fsync off in the embedded etcd, B4's etcd
	// members and B4's raftkv nodes alike (default: fsync on, as in
	// production).
	UnsafeNoFsync bool
	// Logger receives the logs of the coordinators and nodes under test
	// (default zap.NewNop()).
	Logger *zap.Logger
	// Progress, when set, receives one line per step as scenarios run.
	Progress io.Writer
	// Warnings receives one line per scenario of the default set that
	// this binary cannot run (B4 without the raft backend); default
	// os.Stderr.
	Warnings io.Writer
	// Timeout bounds each scenario (default 10m).
	Timeout time.Duration
	// HeapProfile, when set, is the file B5 writes a heap profile to at the
	// moment it measures the coordinator's live heap (in-use space, after
	// two collections); the bench process's embedded etcd is in it too.
	HeapProfile string
}

func (o *Options) fill() error {
	if o.Scale == 0 {
		o.Scale = 1
	}
	if !(o.Scale > 0 && o.Scale <= 1) {
		return fmt.Errorf("bench: scale %v must be in (0, 1]", o.Scale)
	}
	if o.MaxTxnOps == 0 {
		o.MaxTxnOps = etcdkv.DefaultMaxTxnOps
	}
	if o.MaxTxnOps < 8 {
		return fmt.Errorf("bench: max txn ops %d must be >= 8", o.MaxTxnOps)
	}
	if o.Root == "" {
		o.Root = "chanwatch-bench"
	}
	o.Root = strings.Trim(o.Root, "/")
	if o.Root == "" {
		return errors.New("bench: root must not be only slashes")
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Warnings == nil {
		o.Warnings = os.Stderr
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Minute
	}
	if o.Timeout < 0 {
		return fmt.Errorf("bench: negative timeout %v", o.Timeout)
	}
	return nil
}

// Env is the etcd the etcd scenarios run on, plus what a run shares. Create
// it with NewEnv and Close it when done.
type Env struct {
	opts    Options
	srv     *etcdembed.Server
	dir     string
	ownDir  bool
	ccfg    clientv3.Config
	cli     *clientv3.Client // admin: revisions, cleanup, raw lists
	runID   string
	nextRun int
	nodeTTL time.Duration

	mu    sync.Mutex
	cache map[string]Result
}

// NewEnv starts an embedded etcd (or connects to Options.Endpoints) and
// checks that it answers.
func NewEnv(opts Options) (*Env, error) {
	if err := opts.fill(); err != nil {
		return nil, err
	}
	id := make([]byte, 4)
	_, _ = rand.Read(id)
	e := &Env{opts: opts, runID: time.Now().UTC().Format("20060102T150405") + "-" + hex.EncodeToString(id),
		cache: map[string]Result{}, nodeTTL: nodeTTL}
	if opts.Scale < smokeBelow {
		e.nodeTTL = tinyTTL
	}
	if opts.Dir == "" {
		d, err := os.MkdirTemp("", "chanwatch-bench-")
		if err != nil {
			return nil, err
		}
		e.dir, e.ownDir = d, true
	} else {
		if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
			return nil, err
		}
		e.dir = opts.Dir
	}
	eps := opts.Endpoints
	if len(eps) == 0 {
		srv, err := etcdembed.Start(e.dir+"/etcd", etcdembed.WithUnsafeNoFsync(opts.UnsafeNoFsync),
			etcdembed.WithMaxTxnOps(opts.MaxTxnOps), etcdembed.WithQuotaBytes(8<<30))
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("bench: embedded etcd: %w", err)
		}
		e.srv = srv
		eps = srv.Endpoints()
	}
	e.ccfg = clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		MaxCallRecvMsgSize: 256 << 20}
	cli, err := clientv3.New(e.ccfg)
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("bench: etcd client: %w", err)
	}
	e.cli = cli
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e.revision(ctx); err != nil {
		e.Close()
		return nil, fmt.Errorf("bench: etcd at %v does not answer: %w", eps, err)
	}
	return e, nil
}

// Close stops the embedded etcd and removes the temp dir it made.
func (e *Env) Close() error {
	if e.cli != nil {
		e.cli.Close()
	}
	if e.srv != nil {
		e.srv.Close()
	}
	if e.ownDir {
		os.RemoveAll(e.dir)
	}
	return nil
}

// Embedded reports whether the Env runs its own etcd.
func (e *Env) Embedded() bool { return e.srv != nil }

// Scale returns the Env's scale.
func (e *Env) Scale() float64 { return e.opts.Scale }

func (e *Env) logf(format string, args ...any) {
	fmt.Fprintf(e.opts.Progress, "  "+format+"\n", args...)
}

// newRoot returns a fresh root for one scenario.
func (e *Env) newRoot(name string) string {
	e.nextRun++
	return fmt.Sprintf("%s/%s/%s-%d", e.opts.Root, e.runID, name, e.nextRun)
}

// revision returns etcd's current revision.
func (e *Env) revision(ctx context.Context) (int64, error) {
	resp, err := e.cli.Get(ctx, e.opts.Root+"/rev-probe")
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// cleanup deletes roots and, on the embedded server, compacts and
// defragments, so the next scenario starts from a small store. A failure
// is reported on the progress writer: it does not change the figures
// already measured.
func (e *Env) cleanup(ctx context.Context, roots ...string) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := e.clean(ctx, roots...); err != nil {
		e.logf("cleanup: %v", err)
	}
}

func (e *Env) clean(ctx context.Context, roots ...string) error {
	for _, r := range roots {
		if _, err := e.cli.Delete(ctx, r+"/", clientv3.WithPrefix()); err != nil {
			return fmt.Errorf("bench: delete %s: %w", r, err)
		}
	}
	if e.srv == nil {
		return nil
	}
	rev, err := e.revision(ctx)
	if err != nil {
		return err
	}
	if _, err := e.cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		return fmt.Errorf("bench: compact: %w", err)
	}
	if _, err := e.cli.Defragment(ctx, e.ccfg.Endpoints[0]); err != nil {
		return fmt.Errorf("bench: defragment: %w", err)
	}
	return nil
}

// proc is one simulated process's handle on the store: its own etcd client
// (its own connection), closed with the backend, as a crash closes both.
type proc struct {
	kv.Backend
	cli *clientv3.Client
}

func (p *proc) Close() error {
	err := p.Backend.Close()
	p.cli.Close()
	return err
}

// open returns a new process handle on root.
func (e *Env) open(root string) (*proc, error) {
	cli, err := clientv3.New(e.ccfg)
	if err != nil {
		return nil, fmt.Errorf("bench: etcd client: %w", err)
	}
	b, err := etcdkv.New(cli, root, etcdkv.WithMaxTxnOps(e.opts.MaxTxnOps), etcdkv.WithLogger(e.opts.Logger))
	if err != nil {
		cli.Close()
		return nil, err
	}
	return &proc{Backend: b, cli: cli}, nil
}

// rawClients opens n raw etcd clients (n connections), for baselines.
func (e *Env) rawClients(n int) ([]*clientv3.Client, func(), error) {
	var clis []*clientv3.Client
	closeAll := func() {
		for _, c := range clis {
			c.Close()
		}
	}
	for range n {
		c, err := clientv3.New(e.ccfg)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		clis = append(clis, c)
	}
	return clis, closeAll, nil
}
