// Command chaosnode is a chanwatch node (package nodewatch on etcd, or on a
// raftkv node of its own that the test joins to a cluster) for the chaos
// tests that need a separate process to SIGSTOP or to cut off. Its handler reports
// to the test's downstream store over HTTP: "start" when a channel's Watch
// begins, an "effect" every --effect-interval while it runs, and "end" when
// its Release is done, each stamped with the assignment's fencing token.
// It is a test tool, not a product: it has no TLS, no auth and no retries.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/etcdkv"
	"github.com/chanwatch/chanwatch/kv/raftkv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/nodewatch"
)

type handler struct {
	name     string
	effects  string
	interval time.Duration
	id       func() int64
	client   *http.Client

	mu    sync.Mutex
	stops map[string]func()
}

func (h *handler) report(kind, ch string, token int64) bool {
	q := url.Values{"kind": {kind}, "node": {h.name}, "id": {fmt.Sprint(h.id())}, "ch": {ch}, "token": {fmt.Sprint(token)}}
	resp, err := h.client.Post(h.effects+"?"+q.Encode(), "text/plain", nil)
	if err != nil {
		return false
	}
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (h *handler) Watch(ctx context.Context, info meta.ChannelInfo) error {
	h.report("start", info.Name, info.AssignRevision)
	ectx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(h.interval)
		defer tick.Stop()
		for {
			select {
			case <-ectx.Done():
				return
			case <-tick.C:
				h.report("effect", info.Name, info.AssignRevision)
			}
		}
	}()
	h.mu.Lock()
	h.stops[info.Name] = func() { cancel(); <-done }
	h.mu.Unlock()
	return nil
}

func (h *handler) Release(ctx context.Context, ch string) error {
	h.mu.Lock()
	stop := h.stops[ch]
	delete(h.stops, ch)
	h.mu.Unlock()
	if stop != nil {
		stop()
	}
	h.report("end", ch, 0)
	return nil
}

func main() {
	endpoints := flag.String("endpoints", "", "comma-separated etcd client URLs")
	raftID := flag.String("raft-id", "", "run on raftkv instead of etcd: this process is raft node ID, to be joined")
	raftAddr := flag.String("raft-addr", "", "raftkv listen address (with --raft-id)")
	raftDir := flag.String("raft-dir", "", "raftkv state directory (with --raft-id)")
	root := flag.String("root", "chanwatch", "root of chanwatch's keys")
	ttl := flag.Duration("session-ttl", 2*time.Second, "node session TTL")
	name := flag.String("name", "proc", "node name in reports")
	effects := flag.String("effects", "", "URL of the downstream store")
	interval := flag.Duration("effect-interval", 10*time.Millisecond, "time between effects")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	open := func() (kv.Backend, func(), error) { return openEtcd(*endpoints, *root) }
	if *raftID != "" {
		open = func() (kv.Backend, func(), error) { return openRaft(ctx, *raftID, *raftAddr, *raftDir, *root) }
	}
	if err := run(ctx, open, *ttl, *name, *effects, *interval); err != nil {
		fmt.Fprintln(os.Stderr, "chaosnode:", err)
		os.Exit(1)
	}
}

func openEtcd(endpoints, root string) (kv.Backend, func(), error) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: strings.Split(endpoints, ","), DialTimeout: 2 * time.Second,
		DialKeepAliveTime: time.Second, DialKeepAliveTimeout: time.Second, Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, nil, err
	}
	b, err := etcdkv.New(cli, root)
	if err != nil {
		_ = cli.Close()
		return nil, nil, err
	}
	return b, func() { _ = b.Close(); _ = cli.Close() }, nil
}

// openRaft starts a raftkv node that waits to be joined (the test joins it
// through the leader), with the chaos tests' loopback raft timers, and
// returns a handle on root once it knows a leader: this process is a voter,
// so a SIGSTOP pauses a member of the cluster as well as the node.
func openRaft(ctx context.Context, id, addr, dir, root string) (kv.Backend, func(), error) {
	n, err := raftkv.Open(raftkv.Config{ID: id, Addr: addr, Dir: dir},
		raftkv.WithRaftTimeouts(600*time.Millisecond, 600*time.Millisecond, 500*time.Millisecond))
	if err != nil {
		return nil, nil, err
	}
	if _, err := n.WaitLeader(ctx); err != nil {
		_ = n.Close()
		return nil, nil, err
	}
	b, err := n.ClientAt(root)
	if err != nil {
		_ = n.Close()
		return nil, nil, err
	}
	return b, func() { _ = b.Close(); _ = n.Close() }, nil
}

func run(ctx context.Context, open func() (kv.Backend, func(), error), ttl time.Duration, name, effects string, interval time.Duration) error {
	b, closeB, err := open()
	if err != nil {
		return err
	}
	defer closeB()
	h := &handler{name: name, effects: effects, interval: interval, stops: map[string]func(){},
		client: &http.Client{Timeout: time.Second}}
	n, err := nodewatch.New(b, h, nodewatch.WithSessionTTL(ttl), nodewatch.WithProgressInterval(ttl/2), nodewatch.WithAddr(name))
	if err != nil {
		return err
	}
	h.id = n.ID
	return n.Run(ctx)
}
