package netproxy

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Mode is what the proxy does with traffic.
type Mode int

// Modes.
const (
	// Pass forwards bytes both ways.
	Pass Mode = iota + 1
	// Blackhole accepts connections and holds them open, forwarding
	// nothing until the proxy passes again (then the held bytes flow).
	Blackhole
	// Reset sends a TCP RST on every open connection and on every new one.
	Reset
	// HoldUp holds the bytes the client sends (its requests) while still
	// forwarding what the target sends back (answers, watch events): the
	// client's writes are in flight and land when the proxy passes again,
	// as after a one-way network delay.
	HoldUp
)

func (m Mode) String() string {
	switch m {
	case Pass:
		return "pass"
	case Blackhole:
		return "blackhole"
	case Reset:
		return "reset"
	case HoldUp:
		return "hold-up"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// ErrClosed is returned by calls on a closed Proxy.
var ErrClosed = errors.New("netproxy: closed")

// Option configures New.
type Option func(*config)

type config struct {
	logger      *zap.Logger
	dialTimeout time.Duration
}

// WithLogger sets the logger (default zap.NewNop()).
func WithLogger(l *zap.Logger) Option { return func(c *config) { c.logger = l } }

// WithDialTimeout bounds the dial to the target (default 5s).
func WithDialTimeout(d time.Duration) Option { return func(c *config) { c.dialTimeout = d } }

// Proxy forwards TCP connections from Addr to a target. Its methods are safe
// for concurrent use.
type Proxy struct {
	target string
	ln     net.Listener
	cfg    config

	mu     sync.Mutex
	mode   Mode
	gate   chan struct{} // closed and replaced on every mode change
	conns  map[net.Conn]struct{}
	closed bool
	stats  Stats

	wg sync.WaitGroup
}

// Stats counts what the proxy did.
type Stats struct {
	// Accepted connections, and those reset by Reset (open or new).
	Accepted, Reset int
	// Bytes forwarded client→target and target→client.
	Up, Down int64
	// Bytes read from the client (HeldUp) or the target (HeldDown) and
	// held, not yet forwarded, right now.
	HeldUp, HeldDown int64
}

// New listens on a free 127.0.0.1 port and forwards to target (host:port),
// starting in Pass mode. It fails when target is empty, an option is invalid,
// or the listen fails.
func New(target string, opts ...Option) (*Proxy, error) {
	cfg := config{logger: zap.NewNop(), dialTimeout: 5 * time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	if target == "" {
		return nil, errors.New("netproxy: empty target")
	}
	if cfg.logger == nil || cfg.dialTimeout <= 0 {
		return nil, errors.New("netproxy: invalid option (nil logger or dial timeout <= 0)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("netproxy: listen: %w", err)
	}
	p := &Proxy{target: target, ln: ln, cfg: cfg, mode: Pass, gate: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's listening address (127.0.0.1:port).
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Target is the address the proxy forwards to.
func (p *Proxy) Target() string { return p.target }

// Mode returns the current mode.
func (p *Proxy) Mode() Mode {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode
}

// Stats returns the counters so far.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

// Pass forwards traffic again; bytes held by a blackhole flow on.
func (p *Proxy) Pass() { p.SetMode(Pass) }

// Blackhole stops forwarding in both directions without closing anything.
func (p *Proxy) Blackhole() { p.SetMode(Blackhole) }

// HoldUp holds client→target bytes and forwards target→client ones.
func (p *Proxy) HoldUp() { p.SetMode(HoldUp) }

// Reset resets every open connection and, until the mode changes, every
// new one.
func (p *Proxy) Reset() { p.SetMode(Reset) }

// SetMode switches the mode; it takes effect at once on open connections.
func (p *Proxy) SetMode(m Mode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || m == p.mode {
		return
	}
	p.cfg.logger.Debug("netproxy mode", zap.String("target", p.target), zap.Stringer("from", p.mode), zap.Stringer("to", m))
	if m != Pass && m != Blackhole && m != Reset && m != HoldUp {
		panic(fmt.Sprintf("netproxy: unknown mode %d", int(m)))
	}
	// Wake every copier held by a blackhole so it re-reads the mode.
	close(p.gate)
	p.gate = make(chan struct{})
	p.mode = m
	if m == Reset {
		for c := range p.conns {
			p.stats.Reset++
			rst(c)
		}
	}
}

// Close stops listening and closes every connection. Idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.gate) // wake blocked copiers so they see the closed conns
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	err := p.ln.Close()
	p.wg.Wait()
	return err
}

// rst closes c with SO_LINGER 0, which sends a TCP RST instead of a FIN.
func rst(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// track adds c to the open set; false when the proxy is closed or resetting
// (c is then closed).
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		_ = c.Close()
		return false
	}
	if p.mode == Reset {
		p.stats.Reset++
		rst(c)
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

// wait blocks while the proxy holds traffic in direction up (client→target)
// or down; it returns false when the proxy is resetting or closed.
func (p *Proxy) wait(up bool) bool {
	for {
		p.mu.Lock()
		gate, mode, closed := p.gate, p.mode, p.closed
		p.mu.Unlock()
		if closed || mode == Reset {
			return false
		}
		if mode == Pass || mode == HoldUp && !up {
			return true
		}
		<-gate
	}
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.stats.Accepted++
		p.mu.Unlock()
		if !p.track(c) {
			continue
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	defer p.untrack(client)
	// A new connection during a blackhole is accepted (the SYN "got
	// through" to the proxy's backlog) but not forwarded until it heals.
	if !p.wait(true) {
		return
	}
	server, err := net.DialTimeout("tcp", p.target, p.cfg.dialTimeout)
	if err != nil {
		p.cfg.logger.Debug("netproxy dial", zap.String("target", p.target), zap.Error(err))
		rst(client)
		return
	}
	if !p.track(server) {
		return
	}
	defer p.untrack(server)
	done := make(chan struct{}, 2)
	go func() { p.copy(server, client, true); done <- struct{}{} }()
	go func() { p.copy(client, server, false); done <- struct{}{} }()
	<-done
	// One side ended: end the other, as a TCP peer would see it.
	_ = client.Close()
	_ = server.Close()
	<-done
}

// count adds to the held and forwarded byte counters of one direction.
func (p *Proxy) count(up bool, held, fwd int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if up {
		p.stats.HeldUp += held
		p.stats.Up += fwd
	} else {
		p.stats.HeldDown += held
		p.stats.Down += fwd
	}
}

// copy forwards src to dst, holding what it reads while the proxy holds
// that direction. A reader goroutine keeps draining src meanwhile, so that
// HeldUp and HeldDown count every byte sent into the hold, not just the
// first chunk (the rest would wait, uncounted, in the kernel's buffers).
func (p *Proxy) copy(dst, src net.Conn, up bool) {
	q := &chunks{}
	q.cond = sync.NewCond(&q.mu)
	read := make(chan struct{})
	go func() {
		defer close(read)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				p.count(up, int64(n), 0)
				q.push(buf[:n])
			}
			if err != nil {
				q.end() // EOF or a reset: serve closes both sides
				return
			}
		}
	}()
	defer func() {
		// Unblock the reader (serve closes both sides anyway).
		_ = src.Close()
		<-read
		p.count(up, -q.drop(), 0)
	}()
	for {
		b, ok := q.pop()
		if !ok {
			return
		}
		if !p.wait(up) {
			p.count(up, -int64(len(b)), 0)
			return
		}
		_, werr := dst.Write(b)
		p.count(up, -int64(len(b)), int64(len(b)))
		if werr != nil {
			return
		}
	}
}

// chunks is the bytes a copy has read and not yet written, in order.
type chunks struct {
	mu    sync.Mutex
	cond  *sync.Cond
	queue [][]byte
	ended bool
}

func (q *chunks) push(b []byte) {
	q.mu.Lock()
	q.queue = append(q.queue, b)
	q.mu.Unlock()
	q.cond.Signal()
}

func (q *chunks) end() {
	q.mu.Lock()
	q.ended = true
	q.mu.Unlock()
	q.cond.Signal()
}

// pop waits for the next chunk; false when the source ended and every
// chunk was taken.
func (q *chunks) pop() ([]byte, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.queue) == 0 && !q.ended {
		q.cond.Wait()
	}
	if len(q.queue) == 0 {
		return nil, false
	}
	b := q.queue[0]
	q.queue = q.queue[1:]
	return b, true
}

// drop discards what is left and returns its length.
func (q *chunks) drop() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	var n int64
	for _, b := range q.queue {
		n += int64(len(b))
	}
	q.queue = nil
	return n
}
