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
	if err := kv.ValidatePrefix(prefix); err != nil {
		return nil, 0, err
	}
	page := k.pageSize
	for attempt := 1; ; attempt++ {
		kvs, rev, err := k.list(ctx, prefix, page)
		if !errors.Is(err, kv.ErrCompacted) {
			return kvs, rev, err
		}
		page = min(2*page, maxListPage)
		k.logger.Info("list revision compacted between pages, starting over with larger pages",
			zap.String("prefix", prefix), zap.Int("attempt", attempt), zap.Int("page_size", page), zap.Error(err))
	}
}

// list reads prefix in pages of page keys, all at the first page's revision.
func (k *KV) list(ctx context.Context, prefix string, page int) ([]kv.KeyValue, int64, error) {
	from := k.full(prefix)
	end := clientv3.GetPrefixRangeEnd(from)
	var (
		out []kv.KeyValue
		rev int64
	)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(int64(page))}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		var resp *clientv3.GetResponse
		err := k.call(ctx, false, func(ctx context.Context) (err error) {
			resp, err = k.cli.Get(ctx, from, opts...)
			return err
		})
		if err != nil {
			return nil, 0, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
			if resp.More {
				out = make([]kv.KeyValue, 0, resp.Count)
			}
		}
		for _, ekv := range resp.Kvs {
			out = append(out, k.keyValue(ekv))
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return out, rev, nil
		}
		// Next page: the first key after the last one read.
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}
