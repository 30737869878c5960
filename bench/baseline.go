package bench

import (
	"context"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// putBaseline writes total single-key puts of value from clients
// concurrent raw etcd clients (each its own connection, as each node is its
// own process) under root, and returns how long the puts took. Opening the
// clients is not timed.
func (e *Env) putBaseline(ctx context.Context, root string, total, clients int, value []byte) (time.Duration, error) {
	clis, closeAll, err := e.rawClients(clients)
	if err != nil {
		return 0, err
	}
	defer closeAll()
	// Warm each connection, as the nodes' are warm when they ack.
	for _, c := range clis {
		if _, err := c.Get(ctx, root+"/warm"); err != nil {
			return 0, err
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	start := time.Now()
	for i, c := range clis {
		share := total / clients
		if i < total%clients {
			share++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range share {
				if _, err := c.Put(ctx, fmt.Sprintf("%s/k/%03d/%07d", root, i, j), string(value)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return 0, fmt.Errorf("bench: baseline put: %w", err)
	}
	return took, nil
}

// listBaseline lists every key under root with a raw client, in pages of
// 1000 pinned to one revision (as etcdkv's List does), and returns the
// time and the key count.
func (e *Env) listBaseline(ctx context.Context, root string) (time.Duration, int, error) {
	const page = 1000
	prefix := root + "/"
	end := clientv3.GetPrefixRangeEnd(prefix)
	start := time.Now()
	var rev int64
	n := 0
	for from := prefix; ; {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(page)}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := e.cli.Get(ctx, from, opts...)
		if err != nil {
			return 0, 0, fmt.Errorf("bench: baseline list: %w", err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		n += len(resp.Kvs)
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	return time.Since(start), n, nil
}

// streamBaseline lists every key under root with a raw client in one
// RangeStream (etcd 3.7; what etcdkv's List uses when the server serves
// it), and returns the time and the key count.
func (e *Env) streamBaseline(ctx context.Context, root string) (time.Duration, int, error) {
	prefix := root + "/"
	start := time.Now()
	ch, err := e.cli.GetStream(ctx, prefix, clientv3.WithRange(clientv3.GetPrefixRangeEnd(prefix)))
	if err != nil {
		return 0, 0, fmt.Errorf("bench: baseline stream: %w", err)
	}
	n := 0
	for r := range ch {
		if err := r.Err(); err != nil {
			return 0, 0, fmt.Errorf("bench: baseline stream: %w", err)
		}
		n += len(r.Kvs)
	}
	return time.Since(start), n, nil
}
