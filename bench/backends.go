package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/chanwatch/chanwatch/internal/etcdproc"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/etcdkv"
	"github.com/chanwatch/chanwatch/kv/memkv"
)

// txnLoad runs txns compare-and-swap puts (the shape of a node's ack: If
// ModRevision(key) == last Then Put(key, 200 bytes)) from len(clients)
// concurrent clients, each on its own key, and returns how long they took
// and the revision delta of the store.
func txnLoad(ctx context.Context, clients []kv.Backend, txns int) (time.Duration, int64, error) {
	value := ackValue(memoryPayload)
	_, rev0, err := clients[0].Get(ctx, "b4/probe")
	if err != nil && !isNotFound(err) {
		return 0, 0, err
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(clients))
	start := time.Now()
	for i, c := range clients {
		share := txns / len(clients)
		if i < txns%len(clients) {
			share++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := fmt.Sprintf("b4/k/%03d", i)
			var last int64
			for range share {
				resp, err := c.Txn(ctx, kv.Txn{If: []kv.Cmp{kv.CmpModRevision(key, kv.Equal, last)}, Then: []kv.Op{kv.OpPut(key, value)}})
				if err != nil {
					errs <- err
					return
				}
				if !resp.Succeeded {
					errs <- fmt.Errorf("bench: B4: CAS on %s failed at %d", key, last)
					return
				}
				last = resp.Revision
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return 0, 0, err
	}
	_, rev1, err := clients[0].Get(ctx, "b4/probe")
	if err != nil && !isNotFound(err) {
		return 0, 0, err
	}
	return took, rev1 - rev0, nil
}

// Backends is B4: txns compare-and-swap puts from clients concurrent
// clients on a 3-node raftkv cluster (clients spread over the nodes) and on
// memkv, against the same load on a 3-member etcd cluster of bin/etcd
// processes (clients on all endpoints) through etcdkv. All stores fsync
// unless Options.UnsafeNoFsync. Ratio is raftkv's time over etcd's, so
// raftkv >= 0.5x etcd's throughput is ratio <= 2.
func Backends(ctx context.Context, e *Env, txns, clients int) (Result, error) {
	r := Result{Name: "B4 backends", N: txns}
	dir, err := os.MkdirTemp(e.dir, "b4-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)

	e.logf("B4: etcd: 3 members (bin/etcd), %d txns from %d clients", txns, clients)
	etcdTook, etcdWrites, err := b4Etcd(ctx, e, filepath.Join(dir, "etcd"), txns, clients)
	if err != nil {
		return r, err
	}
	e.logf("B4: raftkv: 3 nodes")
	raftTook, _, err := b4Raft(ctx, e, filepath.Join(dir, "raft"), txns, clients)
	if err != nil {
		return r, err
	}
	e.logf("B4: memkv")
	m := memkv.New()
	defer m.Close()
	mcs := make([]kv.Backend, clients)
	for i := range mcs {
		mcs[i] = m.NewClient()
	}
	memTook, _, err := txnLoad(ctx, mcs, txns)
	if err != nil {
		return r, fmt.Errorf("bench: B4 memkv: %w", err)
	}

	r.ChanwatchS, r.BaselineS = raftTook.Seconds(), etcdTook.Seconds()
	r.EtcdWrites = etcdWrites
	tps := func(d time.Duration) float64 { return float64(txns) / d.Seconds() }
	fsync := "fsync on"
	if e.opts.UnsafeNoFsync {
		fsync = "fsync off"
	}
	r.finish("<= 2.0 (raftkv >= 0.5x etcd)", 2.0,
		fmt.Sprintf("ratio = raftkv time / etcd time; etcd 3 members %.0f txn/s; raftkv 3 nodes %.0f txn/s (%.2fx etcd); memkv %.0f txn/s (%.1fx etcd); %d clients; %s; writes are etcd's",
			tps(etcdTook), tps(raftTook), etcdTook.Seconds()/raftTook.Seconds(), tps(memTook), etcdTook.Seconds()/memTook.Seconds(), clients, fsync))
	return r, nil
}

func b4Etcd(ctx context.Context, e *Env, dir string, txns, clients int) (time.Duration, int64, error) {
	opts := []etcdproc.Option{etcdproc.WithUnsafeNoFsync(e.opts.UnsafeNoFsync), etcdproc.WithLogger(e.opts.Logger)}
	if e.opts.EtcdBinary != "" {
		opts = append(opts, etcdproc.WithBinary(e.opts.EtcdBinary))
	}
	c, err := etcdproc.Start(dir, 3, opts...)
	if err != nil {
		return 0, 0, fmt.Errorf("bench: B4: %w", err)
	}
	defer c.Close()
	var bs []kv.Backend
	defer func() {
		for _, b := range bs {
			b.Close()
		}
	}()
	for range clients {
		cli, err := c.Client()
		if err != nil {
			return 0, 0, err
		}
		b, err := etcdkv.New(cli, "bench")
		if err != nil {
			cli.Close()
			return 0, 0, err
		}
		bs = append(bs, &proc{Backend: b, cli: cli})
	}
	took, writes, err := txnLoad(ctx, bs, txns)
	if err != nil {
		return 0, 0, fmt.Errorf("bench: B4 etcd: %w", err)
	}
	return took, writes, nil
}

// StartRaft starts B4's 3-node raftkv cluster in dir, waits for its leader
// and returns a client of node i%3 for each call of client, and a close.
// It is set by whoever links the raft backend (the CLI built with -tags
// raft, this package's tests): hashicorp/raft links package testing, which
// the default CLI binary must not. Without it B4 fails and says so.
var StartRaft func(ctx context.Context, dir string, noFsync bool, lg *zap.Logger) (client func(i int) kv.Backend, close func() error, err error)

func b4Raft(ctx context.Context, e *Env, dir string, txns, clients int) (time.Duration, int64, error) {
	if StartRaft == nil {
		return 0, 0, errors.New("bench: B4 needs the raftkv backend, which this binary was built without: build with -tags raft (make bench does)")
	}
	client, closeFn, err := StartRaft(ctx, dir, e.opts.UnsafeNoFsync, e.opts.Logger)
	if err != nil {
		return 0, 0, fmt.Errorf("bench: B4: raftkv: %w", err)
	}
	defer closeFn()
	bs := make([]kv.Backend, clients)
	for i := range bs {
		cl := client(i)
		defer cl.Close()
		bs[i] = cl
	}
	took, writes, err := txnLoad(ctx, bs, txns)
	if err != nil {
		return 0, 0, fmt.Errorf("bench: B4 raftkv: %w", err)
	}
	return took, writes, nil
}
