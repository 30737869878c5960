package chaos

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/internal/netproxy"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/raftkv"
)

// raftCluster is a raftkv cluster whose nodes advertise a proxy in front of
// their own port, so that a test can cut a node's inbound traffic (raft RPCs
// and forwarded requests from the others) or reset it.
type raftCluster struct {
	t       testing.TB
	cfgs    []raftkv.Config
	opts    []raftkv.Option
	proxies []*netproxy.Proxy

	mu    sync.Mutex
	nodes []*raftkv.Node
	alive []bool
}

func freePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// startRaft starts n nodes that bootstrap together, with loopback raft
// timers, and waits until every node knows the leader. A port that another
// process took between freePort and the node's listen (tests of other
// packages run beside these) makes it start over on new ports.
func startRaft(t testing.TB, n int, opts ...raftkv.Option) *raftCluster {
	t.Helper()
	for attempt := 1; ; attempt++ {
		c, err := tryStartRaft(t, n, opts...)
		if err == nil {
			t.Cleanup(c.close)
			return c
		}
		if !errors.Is(err, syscall.EADDRINUSE) || attempt == 5 {
			t.Fatal(err)
		}
		t.Logf("raft cluster: %v; starting over on new ports", err)
	}
}

// tryStartRaft is one attempt of startRaft; on an error it closes what it
// started.
func tryStartRaft(t testing.TB, n int, opts ...raftkv.Option) (_ *raftCluster, err error) {
	c := &raftCluster{t: t, opts: append([]raftkv.Option{raftkv.WithRaftTimeouts(600*time.Millisecond, 600*time.Millisecond, 500*time.Millisecond)}, opts...)}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	dir := t.TempDir()
	var peers []raftkv.Peer
	for i := range n {
		addr := freePort(t)
		p, err := netproxy.New(addr)
		if err != nil {
			return nil, err
		}
		c.proxies = append(c.proxies, p)
		id := fmt.Sprintf("r%d", i)
		peers = append(peers, raftkv.Peer{ID: id, Addr: p.Addr()})
		c.cfgs = append(c.cfgs, raftkv.Config{ID: id, Addr: addr, Advertise: p.Addr(), Dir: filepath.Join(dir, id), Bootstrap: true})
	}
	for i := range c.cfgs {
		c.cfgs[i].Peers = peers
		node, err := raftkv.Open(c.cfgs[i], c.opts...)
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		c.nodes = append(c.nodes, node)
		c.alive = append(c.alive, true)
		c.mu.Unlock()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, node := range c.nodes {
		if _, err := node.WaitLeader(ctx); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func (c *raftCluster) node(i int) *raftkv.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i]
}

// handle opens a handle on root at node i, closed when t ends.
func (c *raftCluster) handle(t testing.TB, i int, root string) kv.Backend {
	t.Helper()
	b, err := c.node(i).ClientAt(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// leader returns a running node that says it leads, or -1.
func (c *raftCluster) leader() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, n := range c.nodes {
		if c.alive[i] && n.IsLeader() {
			return i
		}
	}
	return -1
}

func (c *raftCluster) kill(i int) error {
	c.mu.Lock()
	n := c.nodes[i]
	c.alive[i] = false
	c.mu.Unlock()
	return n.Close()
}

func (c *raftCluster) restart(i int) error {
	n, err := raftkv.Open(c.cfgs[i], c.opts...)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.nodes[i], c.alive[i] = n, true
	c.mu.Unlock()
	return nil
}

func (c *raftCluster) close() {
	c.mu.Lock()
	nodes := append([]*raftkv.Node(nil), c.nodes...)
	c.mu.Unlock()
	for _, n := range nodes {
		_ = n.Close()
	}
	for _, p := range c.proxies {
		_ = p.Close()
	}
}
