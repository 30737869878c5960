package raftkv

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/chanwatch/chanwatch/kv"
)

// Cluster is a set of nodes on loopback, each with its own directory under
// one root: for tests and demos. Its methods are safe for concurrent use.
type Cluster struct {
	dir  string
	opts []Option

	mu    sync.Mutex
	cfgs  []Config
	nodes []*Node
	alive []bool
}

// loopbackTimeouts make elections fast on one machine, with room for a
// loaded, race-instrumented test binary on two cores: a leader that misses
// its lease steps down and leaves writes in flight with unknown outcomes.
// (300/300/250 ms lost leadership under two busy loops beside make test.)
var loopbackTimeouts = WithRaftTimeouts(600*time.Millisecond, 600*time.Millisecond, 500*time.Millisecond)

// StartCluster starts n nodes on 127.0.0.1 ports picked by the system, with
// their state under dir/node<i>: node 0 bootstraps alone, the others join
// it. It returns once every node knows the leader. opts apply to every
// node, after loopback raft timeouts (300ms heartbeat and election, 250ms
// leader lease). Errors: ErrInvalidConfig, I/O errors, or the first join
// that failed (the nodes started are closed).
func StartCluster(dir string, n int, opts ...Option) (*Cluster, error) {
	if n < 1 {
		return nil, fmt.Errorf("%w: cluster of %d nodes", ErrInvalidConfig, n)
	}
	c := &Cluster{dir: dir, opts: append([]Option{loopbackTimeouts}, opts...)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.start(ctx, n); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) start(ctx context.Context, n int) error {
	for i := range n {
		cfg := Config{
			ID:        fmt.Sprintf("node%d", i),
			Addr:      "127.0.0.1:0",
			Dir:       filepath.Join(c.dir, fmt.Sprintf("node%d", i)),
			Bootstrap: i == 0,
		}
		node, err := Open(cfg, c.opts...)
		if err != nil {
			return err
		}
		// Restarts must come back on the same address: the others know
		// it from the raft configuration.
		cfg.Addr = node.Addr()
		c.mu.Lock()
		c.cfgs = append(c.cfgs, cfg)
		c.nodes = append(c.nodes, node)
		c.alive = append(c.alive, true)
		c.mu.Unlock()
		if i == 0 {
			if _, err := node.WaitLeader(ctx); err != nil {
				return fmt.Errorf("raftkv: first node elects itself: %w", err)
			}
			continue
		}
		if err := c.nodes[0].Join(ctx, cfg.ID, cfg.Addr); err != nil {
			return fmt.Errorf("raftkv: join %s: %w", cfg.ID, err)
		}
	}
	for _, node := range c.nodes {
		if _, err := node.WaitLeader(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Len returns the number of nodes.
func (c *Cluster) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.nodes)
}

// Node returns node i: the running one, or the closed one after Kill.
func (c *Cluster) Node(i int) *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i]
}

// Leader returns the index of a running node that is the leader and has
// taken over (serves reads and keeps leases), or -1.
func (c *Cluster) Leader() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, n := range c.nodes {
		if c.alive[i] && n.IsLeader() && n.readyTerm.Load() == n.raft.CurrentTerm() {
			return i
		}
	}
	return -1
}

// WaitLeader waits until Leader returns a node and returns its index.
func (c *Cluster) WaitLeader(ctx context.Context) (int, error) {
	for {
		if i := c.Leader(); i >= 0 {
			return i, nil
		}
		t := time.NewTimer(10 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return -1, fmt.Errorf("raftkv: waiting for a cluster leader: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// Kill closes node i abruptly (no leadership hand-over); its directory
// stays for Restart.
func (c *Cluster) Kill(i int) error {
	c.mu.Lock()
	n := c.nodes[i]
	c.alive[i] = false
	c.mu.Unlock()
	return n.Close()
}

// Restart reopens node i from its directory on its address.
func (c *Cluster) Restart(i int) error {
	c.mu.Lock()
	if c.alive[i] {
		c.mu.Unlock()
		return fmt.Errorf("raftkv: node %d is running", i)
	}
	cfg := c.cfgs[i]
	c.mu.Unlock()
	n, err := Open(cfg, c.opts...)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.nodes[i], c.alive[i] = n, true
	c.mu.Unlock()
	return nil
}

// Close closes every node.
func (c *Cluster) Close() error {
	c.mu.Lock()
	nodes := append([]*Node(nil), c.nodes...)
	for i := range c.alive {
		c.alive[i] = false
	}
	c.mu.Unlock()
	var errs []error
	for _, n := range nodes {
		errs = append(errs, n.Close())
	}
	return errors.Join(errs...)
}

// StartClients starts an n-node cluster in dir, waits for its leader, and
// returns a client of node i%n for each call of client, and the cluster's
// Close: the shape the benchmarks and the demo take a store in.
func StartClients(ctx context.Context, dir string, n int, opts ...Option) (client func(i int) kv.Backend, close func() error, err error) {
	c, err := StartCluster(dir, n, opts...)
	if err != nil {
		return nil, nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err = c.WaitLeader(wctx)
	cancel()
	if err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("raftkv: leader: %w", err)
	}
	return func(i int) kv.Backend { return c.Node(i % c.Len()).Client() }, c.Close, nil
}
