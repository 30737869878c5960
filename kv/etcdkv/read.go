package etcdkv

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/chanwatch/chanwatch/kv"
)

// listAttempts bounds how often List starts over when a compaction removes
// its pinned revision between two pages.
const listAttempts = 3

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
// compaction removes that revision before the last page, List starts over at
// a new revision (a few times, then it fails with kv.ErrCompacted).
func (k *KV) List(ctx context.Context, prefix string) ([]kv.KeyValue, int64, error) {
	if err := kv.ValidatePrefix(prefix); err != nil {
		return nil, 0, err
	}
	var err error
	for range listAttempts {
		var (
			kvs []kv.KeyValue
			rev int64
		)
		kvs, rev, err = k.list(ctx, prefix)
		if !errors.Is(err, kv.ErrCompacted) {
			return kvs, rev, err
		}
		k.logger.Info("list revision compacted between pages, starting over", zap.String("prefix", prefix), zap.Error(err))
	}
	return nil, 0, err
}

func (k *KV) list(ctx context.Context, prefix string) ([]kv.KeyValue, int64, error) {
	from := k.full(prefix)
	end := clientv3.GetPrefixRangeEnd(from)
	var (
		out []kv.KeyValue
		rev int64
	)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(int64(k.pageSize))}
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
