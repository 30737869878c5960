package raftkv

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// rpcMagic is the first byte of a connection carrying forwarded requests.
// Raft's network transport starts each connection with its RPC type, a
// small integer, so one listener serves both.
const rpcMagic byte = 0xC7

// handshakeTimeout bounds how long an accepted connection may take to
// finish its TLS handshake and send its first byte, so a peer that
// connects and stalls holds only its own goroutine, briefly.
const handshakeTimeout = 5 * time.Second

// errTLSHandshake marks a dial whose TCP connection was made but whose
// TLS handshake failed.
var errTLSHandshake = errors.New("raftkv: TLS handshake failed")

// errPartitioned fails dials of a node cut off by a test.
var errPartitioned = errors.New("raftkv: node partitioned")

// mux owns the node's listener: it routes raft connections to raft's
// transport (as its raft.StreamLayer) and forwarded-request connections to
// serve. Every connection in either direction goes through it, so Close
// and the test partition hook can cut them all. With TLS, the TCP
// connection is tracked and TLS runs on top of it: the first byte that
// tells raft from forwarded requests travels inside the TLS stream.
type mux struct {
	ln        net.Listener
	advertise netAddr
	serve     func(net.Conn) // serves one forwarded-request connection

	// tlsServer and tlsClient are nil for plaintext.
	tlsServer, tlsClient *tls.Config
	// rejected counts accepted connections whose TLS handshake failed.
	rejected atomic.Int64

	raftConns chan net.Conn
	closed    chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup

	mu          sync.Mutex
	conns       map[*trackedConn]struct{}
	partitioned atomic.Bool
}

// newMux serves ln; tlsCfg is the config given to WithTLS, nil for
// plaintext.
func newMux(ln net.Listener, advertise string, serve func(net.Conn), tlsCfg *tls.Config) *mux {
	m := &mux{
		ln:        ln,
		advertise: netAddr(advertise),
		serve:     serve,
		raftConns: make(chan net.Conn),
		closed:    make(chan struct{}),
		conns:     make(map[*trackedConn]struct{}),
	}
	if tlsCfg != nil {
		m.tlsServer, m.tlsClient = tlsConfigs(tlsCfg)
	}
	m.wg.Add(1)
	go m.acceptLoop()
	return m
}

var _ raft.StreamLayer = (*mux)(nil)

func (m *mux) acceptLoop() {
	defer m.wg.Done()
	for {
		c, err := m.ln.Accept()
		if err != nil {
			select {
			case <-m.closed:
				return
			default:
			}
			// A transient accept error (out of descriptors): back off.
			select {
			case <-m.closed:
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		tc := m.track(c)
		if tc == nil {
			continue
		}
		m.wg.Add(1)
		go m.route(tc)
	}
}

// route completes the TLS handshake if any, reads the connection's first
// byte and hands it on. It runs on its own goroutine, not in the accept
// loop, so a slow or silent peer blocks no one else.
func (m *mux) route(tc *trackedConn) {
	defer m.wg.Done()
	var c net.Conn = tc
	_ = tc.SetDeadline(time.Now().Add(handshakeTimeout))
	if m.tlsServer != nil {
		sc := tls.Server(tc, m.tlsServer)
		if err := sc.Handshake(); err != nil {
			// A peer without a certificate from the cluster's CA, or
			// not speaking TLS: nothing it sent is read.
			m.rejected.Add(1)
			_ = tc.Close()
			return
		}
		c = sc
	}
	var first [1]byte
	if _, err := c.Read(first[:]); err != nil {
		_ = c.Close()
		return
	}
	_ = tc.SetDeadline(time.Time{})
	if first[0] == rpcMagic {
		m.serve(c)
		_ = c.Close()
		return
	}
	select {
	case m.raftConns <- &peekedConn{Conn: c, first: first[0], has: true}:
	case <-m.closed:
		_ = c.Close()
	}
}

// track registers c, or closes it and returns nil when the mux is closed
// or partitioned.
func (m *mux) track(c net.Conn) *trackedConn {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.partitioned.Load() || m.isClosed() {
		_ = c.Close()
		return nil
	}
	tc := &trackedConn{Conn: c, m: m}
	m.conns[tc] = struct{}{}
	return tc
}

func (m *mux) isClosed() bool {
	select {
	case <-m.closed:
		return true
	default:
		return false
	}
}

// Accept returns the next raft connection (raft.StreamLayer).
func (m *mux) Accept() (net.Conn, error) {
	select {
	case c := <-m.raftConns:
		return c, nil
	case <-m.closed:
		return nil, net.ErrClosed
	}
}

// Close closes the listener and every connection, and waits for the
// routing goroutines (raft.StreamLayer; the transport calls it on Close).
func (m *mux) Close() error {
	m.closeOnce.Do(func() {
		m.mu.Lock()
		close(m.closed)
		m.mu.Unlock()
		_ = m.ln.Close()
		m.closeAll()
	})
	m.wg.Wait()
	return nil
}

func (m *mux) closeAll() {
	m.mu.Lock()
	conns := make([]*trackedConn, 0, len(m.conns))
	for c := range m.conns {
		conns = append(conns, c)
	}
	m.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

// Addr is the advertised address (raft.StreamLayer): raft reports it as
// this node's address.
func (m *mux) Addr() net.Addr { return m.advertise }

// Dial opens a raft connection (raft.StreamLayer).
func (m *mux) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return m.dial(string(addr), timeout)
}

// dialRPC opens a forwarded-request connection.
func (m *mux) dialRPC(addr string, timeout time.Duration) (net.Conn, error) {
	c, err := m.dial(addr, timeout)
	if err != nil {
		return nil, err
	}
	_ = c.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte{rpcMagic}); err != nil {
		_ = c.Close()
		return nil, err
	}
	_ = c.SetWriteDeadline(time.Time{})
	return c, nil
}

func (m *mux) dial(addr string, timeout time.Duration) (net.Conn, error) {
	if m.partitioned.Load() {
		return nil, errPartitioned
	}
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	tc := m.track(c)
	if tc == nil {
		return nil, fmt.Errorf("dial %s: %w", addr, errPartitioned)
	}
	if m.tlsClient == nil {
		return tc, nil
	}
	cfg := m.tlsClient
	if cfg.ServerName == "" {
		// Verify the peer against the host dialed: an IP address
		// matches the certificate's IP SANs.
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			_ = tc.Close()
			return nil, err
		}
		cfg = cfg.Clone()
		cfg.ServerName = host
	}
	ctx := context.Background()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	cc := tls.Client(tc, cfg)
	if err := cc.HandshakeContext(ctx); err != nil {
		_ = tc.Close()
		return nil, fmt.Errorf("%w with %s: %w", errTLSHandshake, addr, err)
	}
	return cc, nil
}

// setPartitioned cuts (true) or restores (false) every connection of this
// node, both directions: a network partition for tests. It is not part of
// the API because nothing but a test should cut a live node off.
func (m *mux) setPartitioned(on bool) {
	m.mu.Lock()
	m.partitioned.Store(on)
	m.mu.Unlock()
	if on {
		m.closeAll()
	}
}

// trackedConn removes itself from the mux when closed.
type trackedConn struct {
	net.Conn
	m    *mux
	once sync.Once
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.m.mu.Lock()
		delete(c.m.conns, c)
		c.m.mu.Unlock()
	})
	return err
}

// peekedConn gives back the byte route read.
type peekedConn struct {
	net.Conn
	first byte
	has   bool
}

func (c *peekedConn) Read(p []byte) (int, error) {
	if c.has && len(p) > 0 {
		p[0] = c.first
		c.has = false
		return 1, nil
	}
	return c.Conn.Read(p)
}

// netAddr is an advertised "host:port".
type netAddr string

func (a netAddr) Network() string { return "tcp" }
func (a netAddr) String() string  { return string(a) }
