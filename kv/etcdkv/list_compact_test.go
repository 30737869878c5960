package etcdkv_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/etcdkv"
)

// compactingKV compacts the real server to its newest revision after every
// page that has more after it: the next page, pinned to the first page's
// revision, is always compacted away (continuous compaction).
type compactingKV struct {
	clientv3.KV
	bump        string // a key outside the listed prefix, written to move the revision
	compactions atomic.Int64
}

func (c *compactingKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	resp, err := c.KV.Get(ctx, key, opts...)
	if err != nil || !resp.More {
		return resp, err
	}
	put, perr := c.KV.Put(ctx, c.bump, "x")
	if perr != nil {
		return nil, perr
	}
	if _, cerr := c.KV.Compact(ctx, put.Header.Revision); cerr != nil {
		return nil, cerr
	}
	c.compactions.Add(1)
	return resp, nil
}

// Issue 12 (liveness), kind B: a paged List under compaction between every
// two pages still finishes, with every key, at one revision, instead of
// giving up after a fixed number of restarts.
func TestListFinishesUnderContinuousCompaction(t *testing.T) {
	ctx := testContext(t)
	c, err := srv.Client()
	noError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	root := testRoot(t)
	ckv := &compactingKV{KV: c.KV, bump: root + "-bump"}
	c.KV = ckv
	k := newKVAt(t, c, root, etcdkv.WithListPageSize(2))
	const keys = 100
	var ops []kv.Op
	for i := range keys {
		ops = append(ops, kv.OpPut(fmt.Sprintf("k/%04d", i), []byte("v")))
	}
	_, err = k.Txn(ctx, kv.Txn{Then: ops})
	noError(t, err)

	kvs, rev, err := k.List(ctx, "k/")
	noError(t, err)
	equal(t, keys, len(kvs))
	for i, x := range kvs {
		equal(t, fmt.Sprintf("k/%04d", i), x.Key, "sorted by key")
		isTrue(t, x.ModRevision <= rev, "mod revision %d above list revision %d", x.ModRevision, rev)
	}
	// Pages of 2, 4, ..., 64 were each interrupted; 128 holds every key.
	n := ckv.compactions.Load()
	isTrue(t, n >= 6, "only %d compactions interrupted the list: the test did not compact between pages", n)
	t.Logf("%d compactions between pages", n)

	// A done context still ends it.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, _, err = k.List(cctx, "k/")
	isError(t, err, context.Canceled)
}
