package raftkv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.uber.org/zap"

	"github.com/chanwatch/chanwatch/kv"
)

// Node is one replica of a raftkv cluster, and a kv.Backend: every node
// serves every call, forwarding to the leader what must go through it. All
// methods are safe for concurrent use.
type Node struct {
	id   string
	addr string
	o    options
	log  *zap.Logger

	raft     *raft.Raft
	fsm      *fsm
	mux      *mux
	trans    *raft.NetworkTransport
	logs     *raftboltdb.BoltStore
	pool     *rpcPool
	lessor   *lessor
	verifier *verifier
	obs      *raft.Observer
	obsCh    chan raft.Observation

	// readyTerm is the term in which this node, as leader, has applied its
	// own first entry: from then on its commit index covers every entry
	// of earlier terms, so it can serve reads (see lead).
	readyTerm atomic.Uint64

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on leader or readiness changes

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	// started is closed once raft runs: the listener serves forwarded
	// requests only from then on (raft's own traffic needs no wait).
	started   chan struct{}
	closeOnce sync.Once
	closeErr  error
	wg        sync.WaitGroup
}

var _ kv.Backend = (*Node)(nil)

// Open starts a node: it bootstraps a new cluster (Config.Bootstrap on an
// empty Dir), restarts from the state in Dir, or starts empty and waits to
// be joined (Join on a member). It returns once the node listens; use
// WaitLeader to wait for the cluster. Errors: ErrInvalidConfig for a bad
// Config or Option, before anything is created; otherwise I/O errors.
func Open(cfg Config, opts ...Option) (*Node, error) {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	n := &Node{id: cfg.ID, o: o, log: o.log.With(zap.String("node", cfg.ID)), changed: make(chan struct{}), started: make(chan struct{})}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	if err := n.open(cfg); err != nil {
		n.cancel()
		n.release()
		return nil, err
	}
	return n, nil
}

func (n *Node) open(cfg Config) error {
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return fmt.Errorf("raftkv: %w", err)
	}
	rc := n.o.raftConfig(n.id)
	logs, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.Dir, "raft.db"), NoSync: n.o.noFsync})
	if err != nil {
		return fmt.Errorf("raftkv: open log store: %w", err)
	}
	n.logs = logs
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.Dir, 2, rc.Logger)
	if err != nil {
		return fmt.Errorf("raftkv: open snapshot store: %w", err)
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("raftkv: listen: %w", err)
	}
	n.addr = cfg.Advertise
	if n.addr == "" {
		n.addr = ln.Addr().String()
		if err := checkAdvertise(n.addr); err != nil {
			_ = ln.Close()
			return err
		}
	}
	n.mux = newMux(ln, n.addr, n.serveConn, n.o.tls)
	n.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  n.mux,
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  rc.Logger,
	})
	n.pool = newRPCPool(n.mux, n.o.election)
	n.fsm = newFSM()
	n.lessor = newLessor(n.o.clock)

	if cfg.Bootstrap {
		has, err := raft.HasExistingState(logs, logs, snaps)
		if err != nil {
			return fmt.Errorf("raftkv: %w", err)
		}
		if !has {
			servers := []raft.Server{{ID: raft.ServerID(n.id), Address: raft.ServerAddress(n.addr)}}
			if len(cfg.Peers) > 0 {
				servers = servers[:0]
				for _, p := range cfg.Peers {
					addr := p.Addr
					if p.ID == n.id {
						addr = n.addr
					}
					servers = append(servers, raft.Server{ID: raft.ServerID(p.ID), Address: raft.ServerAddress(addr)})
				}
			}
			if err := raft.BootstrapCluster(rc, logs, logs, snaps, n.trans, raft.Configuration{Servers: servers}); err != nil {
				return fmt.Errorf("raftkv: bootstrap: %w", err)
			}
		}
	}
	r, err := raft.NewRaft(rc, n.fsm, logs, logs, snaps, n.trans)
	if err != nil {
		return fmt.Errorf("raftkv: start raft: %w", err)
	}
	n.raft = r
	// A healthy quorum answers within a heartbeat round trip; a check
	// that takes an election timeout is retried.
	n.verifier = newVerifier(r, n.o.heartbeat+n.o.election)
	n.obsCh = make(chan raft.Observation, 16)
	n.obs = raft.NewObserver(n.obsCh, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.LeaderObservation, raft.RaftState:
			return true
		}
		return false
	})
	r.RegisterObserver(n.obs)
	n.wg.Add(1)
	go n.watchLeadership()
	close(n.started)
	n.log.Info("raftkv node started", zap.String("addr", n.addr), zap.String("dir", cfg.Dir))
	return nil
}

// release frees whatever open created, in reverse order.
func (n *Node) release() {
	if n.raft != nil {
		n.raft.DeregisterObserver(n.obs)
		if err := n.raft.Shutdown().Error(); err != nil {
			n.closeErr = errors.Join(n.closeErr, err)
		}
	}
	if n.trans != nil {
		_ = n.trans.Close() // closes the mux
	} else if n.mux != nil {
		_ = n.mux.Close()
	}
	if n.pool != nil {
		n.pool.close()
	}
	n.wg.Wait()
	if n.fsm != nil {
		n.fsm.store.Close() // ends open watches with kv.ErrClosed
	}
	if n.logs != nil {
		if err := n.logs.Close(); err != nil {
			n.closeErr = errors.Join(n.closeErr, err)
		}
	}
}

// Close stops the node: calls in flight and later fail with kv.ErrClosed
// (writes in flight with kv.ErrUnknownOutcome too), open watches end with
// kv.ErrClosed. The node stays a member: its Dir restarts it. Close does
// not hand leadership over; the others elect a leader as after a crash.
// Close is idempotent.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.cancel()
		n.notifyChanged()
		n.release()
		n.log.Info("raftkv node closed")
	})
	return n.closeErr
}

// ID returns the node's ID.
func (n *Node) ID() string { return n.id }

// Addr returns the address other nodes reach this node at.
func (n *Node) Addr() string { return n.addr }

// Leader returns the ID of the leader this node knows of, or "" when it
// knows none.
func (n *Node) Leader() string {
	_, id := n.raft.LeaderWithID()
	return string(id)
}

// IsLeader reports whether this node is the leader now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// WaitLeader waits until this node knows a leader and returns its ID.
// Errors: ctx's error, kv.ErrClosed.
func (n *Node) WaitLeader(ctx context.Context) (string, error) {
	for {
		ch := n.changedCh()
		if n.closed() {
			return "", kv.ErrClosed
		}
		if id := n.Leader(); id != "" {
			return id, nil
		}
		if err := n.pause(ctx, ch, 50*time.Millisecond); err != nil {
			return "", err
		}
	}
}

// Join adds a node that was started empty (no Bootstrap, no state) as a
// voter. It runs on the leader, forwarded there if needed; joining a member
// again with the same address is a no-op. With WithTLS, the leader first
// makes one request to the node at addr over mutual TLS, so that a node
// that cannot authenticate never becomes a voter (a voter no one can reach
// would count towards every quorum). Errors: kv.ErrUnavailable without a
// leader or when addr cannot be reached, kv.ErrPermissionDenied when the
// TLS handshake with addr fails on a certificate (either side's), ctx's
// error, kv.ErrClosed.
func (n *Node) Join(ctx context.Context, id, addr string) error {
	if id == "" || addr == "" {
		return fmt.Errorf("%w: join needs an ID and an address", ErrInvalidConfig)
	}
	return n.onLeader(ctx, "join", func(ctx context.Context) error {
		return n.joinLocal(ctx, id, addr)
	}, func(ctx context.Context, leader string) error {
		_, err := n.forward(ctx, leader, &rpcRequest{Method: rpcJoin, ID: id, Addr: addr})
		return err
	})
}

// Remove removes a member from the cluster (forwarded to the leader).
// Errors as Join.
func (n *Node) Remove(ctx context.Context, id string) error {
	if id == "" {
		return fmt.Errorf("%w: remove needs an ID", ErrInvalidConfig)
	}
	return n.onLeader(ctx, "remove", func(ctx context.Context) error {
		return n.removeLocal(ctx, id)
	}, func(ctx context.Context, leader string) error {
		_, err := n.forward(ctx, leader, &rpcRequest{Method: rpcRemove, ID: id})
		return err
	})
}

func (n *Node) joinLocal(ctx context.Context, id, addr string) error {
	if n.raft.State() != raft.Leader {
		return errNotLeader
	}
	if n.mux.tlsClient != nil {
		if _, err := n.pool.call(ctx, addr, &rpcRequest{Method: rpcPing, Timeout: n.o.requestTimeout}); err != nil {
			return probeError(ctx, id, addr, err)
		}
	}
	return waitFuture(ctx, n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, n.o.requestTimeout), verifyError)
}

// probeError classifies a failed probe of a joining node. A TCP
// connection that could not be made, or a timeout, is kv.ErrUnavailable.
// A failed TLS handshake (a certificate either side refused, a peer not
// speaking TLS) is kv.ErrPermissionDenied, and so is a connection dropped
// after it: under TLS 1.3 the dialer finishes its handshake before the
// peer has checked the dialer's certificate, and a peer that refuses it
// sends an alert and closes, which the dialer sees as a failed write or
// read.
func probeError(ctx context.Context, id, addr string, err error) error {
	var ce *callError
	var ne net.Error
	timeout := ctx.Err() != nil || (errors.As(err, &ne) && ne.Timeout())
	if !timeout && (errors.Is(err, errTLSHandshake) || (errors.As(err, &ce) && ce.sent)) {
		return fmt.Errorf("%w: join %s: %s refused the TLS connection: %w", kv.ErrPermissionDenied, id, addr, err)
	}
	return fmt.Errorf("%w: join %s: cannot reach %s: %w", kv.ErrUnavailable, id, addr, err)
}

func (n *Node) removeLocal(ctx context.Context, id string) error {
	if n.raft.State() != raft.Leader {
		return errNotLeader
	}
	return waitFuture(ctx, n.raft.RemoveServer(raft.ServerID(id), 0, n.o.requestTimeout), verifyError)
}

// waitFuture waits for f until ctx ends; raft errors go through mapErr.
func waitFuture(ctx context.Context, f raft.Future, mapErr func(error) error) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }() // returns at the latest when raft shuts down
	select {
	case err := <-done:
		if err != nil {
			return mapErr(err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (n *Node) closed() bool { return n.ctx.Err() != nil }

func (n *Node) changedCh() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.changed
}

func (n *Node) notifyChanged() {
	n.mu.Lock()
	close(n.changed)
	n.changed = make(chan struct{})
	n.mu.Unlock()
}

// pause waits for ch, for d, or until ctx or the node ends.
func (n *Node) pause(ctx context.Context, ch <-chan struct{}, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return nil
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-n.ctx.Done():
		return kv.ErrClosed
	}
}

// watchLeadership follows raft's leadership signals. LeaderCh coalesces
// transitions and observations may be dropped, so each signal (and a slow
// tick, as a backstop) just re-reads raft's state.
func (n *Node) watchLeadership() {
	defer n.wg.Done()
	tick := time.NewTicker(n.o.heartbeat)
	defer tick.Stop()
	var leading uint64 // the term a lead goroutine was started for
	for {
		select {
		case <-n.raft.LeaderCh():
		case <-n.obsCh:
		case <-tick.C:
		case <-n.ctx.Done():
			return
		}
		n.notifyChanged()
		if n.raft.State() != raft.Leader {
			continue
		}
		if term := n.raft.CurrentTerm(); term != leading {
			leading = term
			n.wg.Add(1)
			go n.lead(term)
		}
	}
}

// futureError waits for f, or for the node to close: raft does not answer
// a future still queued when it shuts down, so a goroutine of the node
// waiting on one would keep Close (which waits for them) from returning.
// The helper goroutine may stay blocked; it is one per closed node at most.
func (n *Node) futureError(f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-n.ctx.Done():
		return kv.ErrClosed
	}
}

// lead is the leader's work for one term: apply a barrier entry, so that
// the commit index covers all earlier terms and the FSM holds every lease;
// give every lease a full TTL from now, as etcd does; then expire leases
// through the log until the term ends.
func (n *Node) lead(term uint64) {
	defer n.wg.Done()
	log := n.log.With(zap.Uint64("term", term))
	stillLeading := func() bool {
		return n.ctx.Err() == nil && n.raft.State() == raft.Leader && n.raft.CurrentTerm() == term
	}
	for {
		if !stillLeading() {
			return
		}
		err := n.futureError(n.raft.Apply(command{Op: opBarrier}.encode(), n.o.requestTimeout))
		if err == nil {
			break
		}
		log.Warn("leader barrier failed", zap.Error(err))
		if err := n.pause(n.ctx, nil, n.o.heartbeat); err != nil {
			return
		}
	}
	if !stillLeading() {
		return
	}
	// The ticker starts before the deadlines are set: on a fake clock, an
	// Advance right after takeover must reach the expiry loop.
	tick := n.o.clock.NewTicker(n.o.leaseCheck)
	defer tick.Stop()
	n.lessor.takeover(term, n.fsm.store.Leases())
	defer n.lessor.stop(term)
	n.readyTerm.Store(term)
	n.notifyChanged()
	log.Info("leading", zap.Uint64("applied", n.fsm.appliedIndex()))
	n.expireLoop(term, tick, stillLeading)
}

// onLeader runs local when this node is the leader and remote(leader
// address) otherwise. Either returns errNotLeader (wrapped) for "not
// applied, try the leader again": onLeader then waits for a leader change
// or a short backoff, until ctx, the request timeout or Close.
func (n *Node) onLeader(ctx context.Context, what string, local func(context.Context) error, remote func(context.Context, string) error) error {
	if n.closed() {
		return kv.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("raftkv: %s: %w", what, err)
	}
	bound := time.NewTimer(n.o.requestTimeout)
	defer bound.Stop()
	backoff := 5 * time.Millisecond
	var last error
	for {
		ch := n.changedCh()
		addr, id := n.raft.LeaderWithID()
		var err error
		switch {
		case id == "":
			err = fmt.Errorf("%w: no leader known", errNotLeader)
		case string(id) == n.id:
			err = local(ctx)
		default:
			err = remote(ctx, string(addr))
		}
		if !errors.Is(err, errNotLeader) {
			if n.closed() && err != nil && !errors.Is(err, kv.ErrClosed) {
				err = fmt.Errorf("%w: %w", kv.ErrClosed, err)
			}
			return err
		}
		last = err
		t := time.NewTimer(backoff)
		backoff = min(2*backoff, 100*time.Millisecond)
		select {
		case <-ch:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("raftkv: %s: waiting for a leader: %w (%w: %v)", what, ctx.Err(), kv.ErrUnavailable, last)
		case <-bound.C:
			t.Stop()
			return fmt.Errorf("%w: %s: no leader within %v: %v", kv.ErrUnavailable, what, n.o.requestTimeout, last)
		case <-n.ctx.Done():
			t.Stop()
			return kv.ErrClosed
		}
		t.Stop()
	}
}

// propose commits c through the leader and returns the applied result.
// c.Op must be a write (not a barrier).
func (n *Node) propose(ctx context.Context, c command) (*result, error) {
	var res *result
	err := n.onLeader(ctx, c.Op.String(), func(ctx context.Context) error {
		r, err := n.applyLocal(ctx, c)
		res = r
		return err
	}, func(ctx context.Context, leader string) error {
		resp, err := n.forward(ctx, leader, &rpcRequest{Method: rpcPropose, Cmd: c.encode()})
		var ce *callError
		if errors.As(err, &ce) && ce.sent {
			return fmt.Errorf("%w: forwarded %v to %s: %w", kv.ErrUnknownOutcome, c.Op, leader, err)
		}
		if resp != nil {
			res = &result{Txn: resp.Txn, Rev: resp.Rev, Lease: resp.Lease}
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return res, res.Err
}

// applyLocal proposes c on this node, which must be the leader, and waits
// until it is applied here.
func (n *Node) applyLocal(ctx context.Context, c command) (*result, error) {
	if n.raft.State() != raft.Leader {
		return nil, errNotLeader
	}
	if err := ctx.Err(); err != nil {
		return nil, err // not proposed
	}
	timeout := n.o.requestTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = max(time.Millisecond, min(timeout, time.Until(dl)))
	}
	f := n.raft.Apply(c.encode(), timeout)
	done := make(chan error, 1)
	go func() { done <- f.Error() }() // returns at the latest when raft shuts down
	select {
	case err := <-done:
		if err != nil {
			return nil, applyError(err)
		}
		res, ok := f.Response().(*result)
		if !ok {
			return nil, fmt.Errorf("raftkv: %v: unexpected apply response %T", c.Op, f.Response())
		}
		if c.Op == opGrant && res.Err == nil {
			n.lessor.granted(res.Lease, c.TTL)
		}
		return res, res.Err
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %v proposed, context done before it applied: %w", kv.ErrUnknownOutcome, c.Op, ctx.Err())
	case <-n.ctx.Done():
		return nil, fmt.Errorf("%w: %v proposed, node closed before it applied: %w", kv.ErrUnknownOutcome, c.Op, kv.ErrClosed)
	}
}

// checkCommand validates a command against this node's limits before it
// goes into the log: a forwarded command is checked again by the leader.
func (n *Node) checkCommand(c command) error {
	switch c.Op {
	case opTxn:
		if err := kv.ValidateTxn(*c.Txn, n.o.maxTxnOps); err != nil {
			return err
		}
		return kv.ValidateTxnBytes(*c.Txn, n.o.maxTxnBytes)
	case opGrant:
		if c.TTL <= 0 {
			return fmt.Errorf("%w: %v", kv.ErrInvalidTTL, c.TTL)
		}
	case opBarrier, opExpire:
		// Only the leader itself decides these.
		return fmt.Errorf("%w: %v is not a client command", kv.ErrInvalidTxn, c.Op)
	}
	return nil
}
