package etcdkv

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/chanwatch/chanwatch/kv"
)

// maxListPage caps how far List grows its pages while compactions keep
// interrupting it; in practice a prefix fits in one page long before.
const maxListPage = 1 << 30

// Get returns key and the revision the read was served at (a linearizable
// read); see kv.KV.
func (k *KV) Get(ctx context.Context, key string) (kv.KeyValue, int64, error) {
	if err := kv.ValidateKey(key); err != nil {
		return kv.KeyValue{}, 0, err
	}
	var resp *clientv3.GetResponse
	err := k.call(ctx, false, func(ctx context.Context) (err error) {
		resp, err = k.cli.Get(ctx, k.full(key))
		return err
	})
	if err != nil {
		return kv.KeyValue{}, 0, err
	}
	rev := resp.Header.Revision
	if len(resp.Kvs) == 0 {
		return kv.KeyValue{}, rev, fmt.Errorf("etcdkv: %w: %q", kv.ErrKeyNotFound, key)
	}
	return k.keyValue(resp.Kvs[0]), rev, nil
}

// List returns every key with prefix, sorted, read at one revision; see
// kv.KV. It reads in pages of the configured size, each pinned to the first
// page's revision, so no single response holds a huge prefix. If a
// compaction removes that revision before the last page, List starts over
// at the newest revision with pages twice as large, for as long as ctx
// allows: under continuous compaction each attempt needs fewer pages, and
// once the prefix fits in one page the read is a single request at one
// revision, which no compaction can interrupt. So List always finishes.
func (k *KV) List(ctx context.Context, prefix string) ([]kv.KeyValue, int64, error) {
	var out []kv.KeyValue
	rev, err := k.ListPages(ctx, prefix, func(page []kv.KeyValue, _ int64, restart bool) error {
		if restart {
			out = out[:0]
		}
		if out == nil {
			out = page
		} else {
			out = append(out, page...)
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	return out, rev, nil
}

// ListPages reads prefix as List does and hands fn each page while the
// next is read (one request ahead); see kv.Pager.
func (k *KV) ListPages(ctx context.Context, prefix string, fn func(page []kv.KeyValue, rev int64, restart bool) error) (int64, error) {
	if err := kv.ValidatePrefix(prefix); err != nil {
		return 0, err
	}
	page := k.pageSize
	for attempt := 1; ; attempt++ {
		rev, err := k.list(ctx, prefix, page, func(kvs []kv.KeyValue, rev int64, first bool) error {
			return fn(kvs, rev, first && attempt > 1)
		})
		if !errors.Is(err, kv.ErrCompacted) {
			return rev, err
		}
		page = min(2*page, maxListPage)
		k.logger.Info("list revision compacted between pages, starting over with larger pages",
			zap.String("prefix", prefix), zap.Int("attempt", attempt), zap.Int("page_size", page), zap.Error(err))
	}
}

// list reads prefix in pages of page keys, all at the first page's
// revision, and calls fn with each, reading the next page meanwhile.
func (k *KV) list(ctx context.Context, prefix string, page int, fn func(kvs []kv.KeyValue, rev int64, first bool) error) (int64, error) {
	end := clientv3.GetPrefixRangeEnd(k.full(prefix))
	get := func(ctx context.Context, from string, rev int64) (resp *clientv3.GetResponse, err error) {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(int64(page))}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		err = k.call(ctx, false, func(ctx context.Context) (err error) {
			resp, err = k.cli.Get(ctx, from, opts...)
			return err
		})
		return resp, err
	}
	resp, err := get(ctx, k.full(prefix), 0)
	if err != nil {
		return 0, err
	}
	rev := resp.Header.Revision
	for first := true; ; first = false {
		more := resp.More && len(resp.Kvs) > 0
		var ahead <-chan pageResult
		cancel := context.CancelFunc(func() {})
		if more {
			// The next page: the first key after the last one read.
			from := string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
			ahead, cancel = readAhead(ctx, func(ctx context.Context) (*clientv3.GetResponse, error) {
				return get(ctx, from, rev)
			})
		}
		kvs := make([]kv.KeyValue, len(resp.Kvs))
		for i, ekv := range resp.Kvs {
			kvs[i] = k.keyValue(ekv)
		}
		if err := fn(kvs, rev, first); err != nil {
			cancel()
			if ahead != nil {
				<-ahead
			}
			return 0, err
		}
		if !more {
			return rev, nil
		}
		n := <-ahead
		cancel()
		if n.err != nil {
			return 0, n.err
		}
		resp = n.resp
	}
}

// pageResult is a page read ahead.
type pageResult struct {
	resp *clientv3.GetResponse
	err  error
}

// readAhead starts get in its own goroutine; its result comes on the
// channel (buffered: the goroutine never blocks), and cancel ends it early.
func readAhead(ctx context.Context, get func(context.Context) (*clientv3.GetResponse, error)) (<-chan pageResult, context.CancelFunc) {
	actx, cancel := context.WithCancel(ctx)
	ch := make(chan pageResult, 1)
	go func() {
		r, err := get(actx)
		ch <- pageResult{r, err}
	}()
	return ch, cancel
}
