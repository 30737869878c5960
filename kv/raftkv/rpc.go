package raftkv

import (
	"bufio"
	"context"
	"encoding/gob"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/chanwatch/chanwatch/kv"
)

// Forwarding: a node that is not the leader sends writes, read-index
// requests, keep-alives and membership changes to the leader over a small
// request/response protocol: gob-encoded rpcRequest and rpcResponse frames,
// one call at a time per connection, on the same port as raft (see mux).

type rpcMethod uint8

const (
	rpcPropose    rpcMethod = iota + 1 // Cmd: apply a command on the leader
	rpcReadIndex                       // return the leader's verified commit index
	rpcKeepAlive                       // Lease
	rpcTimeToLive                      // Lease
	rpcJoin                            // ID, Addr
	rpcRemove                          // ID
	rpcPing                            // nothing: proves the connection (Join's probe under TLS)
)

type rpcRequest struct {
	Method rpcMethod
	// Timeout is what is left of the caller's deadline: the leader stops
	// waiting then too.
	Timeout time.Duration
	Cmd     []byte
	Lease   kv.LeaseID
	ID      string
	Addr    string
}

type rpcResponse struct {
	Txn   kv.TxnResponse
	Rev   int64
	Lease kv.LeaseID
	TTL   time.Duration
	Index uint64
	Err   *wireError
}

// callError is a failed call. sent says whether the request may have
// reached the leader: a write whose call failed after that has an unknown
// outcome.
type callError struct {
	sent bool
	err  error
}

func (e *callError) Error() string { return e.err.Error() }
func (e *callError) Unwrap() error { return e.err }

// aLongTimeAgo is a deadline that makes blocked I/O return at once.
var aLongTimeAgo = time.Unix(1, 0)

// rpcConn is one pooled connection with its gob streams.
type rpcConn struct {
	c   net.Conn
	w   *bufio.Writer
	enc *gob.Encoder
	dec *gob.Decoder
}

// rpcPool keeps idle connections per address.
type rpcPool struct {
	mux     *mux
	timeout time.Duration // dial timeout

	mu     sync.Mutex
	idle   map[string][]*rpcConn
	closed bool
}

const maxIdlePerAddr = 8

func newRPCPool(m *mux, dialTimeout time.Duration) *rpcPool {
	return &rpcPool{mux: m, timeout: dialTimeout, idle: make(map[string][]*rpcConn)}
}

func (p *rpcPool) get(addr string) (*rpcConn, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, kv.ErrClosed
	}
	if cs := p.idle[addr]; len(cs) > 0 {
		c := cs[len(cs)-1]
		p.idle[addr] = cs[:len(cs)-1]
		p.mu.Unlock()
		return c, nil
	}
	p.mu.Unlock()
	c, err := p.mux.dialRPC(addr, p.timeout)
	if err != nil {
		return nil, err
	}
	w := bufio.NewWriter(c)
	return &rpcConn{c: c, w: w, enc: gob.NewEncoder(w), dec: gob.NewDecoder(bufio.NewReader(c))}, nil
}

func (p *rpcPool) put(addr string, c *rpcConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || len(p.idle[addr]) >= maxIdlePerAddr {
		_ = c.c.Close()
		return
	}
	p.idle[addr] = append(p.idle[addr], c)
}

// drop closes every idle connection to addr: after one failed, the others
// are likely dead too (the peer restarted).
func (p *rpcPool) drop(addr string) {
	p.mu.Lock()
	cs := p.idle[addr]
	delete(p.idle, addr)
	p.mu.Unlock()
	for _, c := range cs {
		_ = c.c.Close()
	}
}

func (p *rpcPool) close() {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, cs := range idle {
		for _, c := range cs {
			_ = c.c.Close()
		}
	}
}

// call sends req to addr and waits for the response, until ctx ends.
// Errors are *callError.
func (p *rpcPool) call(ctx context.Context, addr string, req *rpcRequest) (*rpcResponse, error) {
	if err := ctx.Err(); err != nil {
		return nil, &callError{err: err}
	}
	c, err := p.get(addr)
	if err != nil {
		return nil, &callError{err: fmt.Errorf("raftkv: dial %s: %w", addr, err)}
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.c.SetDeadline(dl)
	} else {
		_ = c.c.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { _ = c.c.SetDeadline(aLongTimeAgo) })
	fail := func(err error) (*rpcResponse, error) {
		stop()
		_ = c.c.Close()
		p.drop(addr)
		if cerr := ctx.Err(); cerr != nil {
			err = fmt.Errorf("%w (%v)", cerr, err)
		}
		return nil, &callError{sent: true, err: fmt.Errorf("raftkv: call %s: %w", addr, err)}
	}
	if err := c.enc.Encode(req); err != nil {
		return fail(err)
	}
	if err := c.w.Flush(); err != nil {
		return fail(err)
	}
	var resp rpcResponse
	if err := c.dec.Decode(&resp); err != nil {
		return fail(err)
	}
	if !stop() {
		// ctx ended as the response arrived: the deadline is poisoned.
		_ = c.c.Close()
	} else {
		_ = c.c.SetDeadline(time.Time{})
		p.put(addr, c)
	}
	return &resp, nil
}

// serveConn answers forwarded requests on one connection until it closes.
func (n *Node) serveConn(c net.Conn) {
	// A peer may forward to this node while Open is still starting raft.
	select {
	case <-n.started:
	case <-n.ctx.Done():
		return
	}
	w := bufio.NewWriter(c)
	enc, dec := gob.NewEncoder(w), gob.NewDecoder(bufio.NewReader(c))
	for {
		var req rpcRequest
		if err := dec.Decode(&req); err != nil {
			return
		}
		resp := n.handle(&req)
		if err := enc.Encode(resp); err != nil {
			return
		}
		if err := w.Flush(); err != nil {
			return
		}
	}
}

// handle runs one forwarded request here, as the leader; a node that is
// not the leader answers errNotLeader and the caller looks again.
func (n *Node) handle(req *rpcRequest) *rpcResponse {
	timeout := req.Timeout
	if timeout <= 0 || timeout > n.o.requestTimeout {
		timeout = n.o.requestTimeout
	}
	ctx, cancel := context.WithTimeout(n.ctx, timeout)
	defer cancel()
	var resp rpcResponse
	var err error
	switch req.Method {
	case rpcPropose:
		var c command
		if c, err = decodeCommand(req.Cmd); err != nil {
			err = fmt.Errorf("%w: forwarded command: %w", kv.ErrInvalidTxn, err)
			break
		}
		if err = n.checkCommand(c); err != nil {
			break
		}
		var res *result
		if res, err = n.applyLocal(ctx, c); err == nil {
			resp.Txn, resp.Rev, resp.Lease, err = res.Txn, res.Rev, res.Lease, res.Err
		}
	case rpcReadIndex:
		resp.Index, err = n.readIndexLocal(ctx)
	case rpcKeepAlive:
		resp.TTL, err = n.keepAliveLocal(ctx, req.Lease)
	case rpcTimeToLive:
		resp.TTL, err = n.timeToLiveLocal(ctx, req.Lease)
	case rpcJoin:
		err = n.joinLocal(ctx, req.ID, req.Addr)
	case rpcRemove:
		err = n.removeLocal(ctx, req.ID)
	case rpcPing:
	default:
		err = fmt.Errorf("raftkv: unknown forwarded method %d", req.Method)
	}
	if err != nil && n.closed() && !errors.Is(err, kv.ErrUnknownOutcome) {
		// This node is closing: nothing was done, ask the next leader.
		err = fmt.Errorf("%w: %s closed: %w", errNotLeader, n.id, err)
	}
	resp.Err = toWire(err)
	return &resp
}

// forward calls the leader at addr. A failure before the request was sent
// is errNotLeader (look for the leader again); after it, the failure is
// returned as is with sent set.
func (n *Node) forward(ctx context.Context, addr string, req *rpcRequest) (*rpcResponse, error) {
	req.Timeout = n.o.requestTimeout
	if dl, ok := ctx.Deadline(); ok {
		req.Timeout = time.Until(dl)
	}
	resp, err := n.pool.call(ctx, addr, req)
	if err != nil {
		var ce *callError
		if errors.As(err, &ce) && !ce.sent && ctx.Err() == nil {
			return nil, fmt.Errorf("%w: %w", errNotLeader, err)
		}
		return nil, err
	}
	if err := resp.Err.err(); err != nil {
		return resp, err
	}
	return resp, nil
}
