package etcdkv_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
	const keys = 100
	k, ckv := compactingRoot(t, 2, keys)

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

// ListPages hands over pages as they are read; a compaction between pages
// starts the read over with restart set, and what fn keeps after the last
// restart is exactly the prefix at the revision returned.
func TestListPagesRestartsOnCompaction(t *testing.T) {
	ctx := testContext(t)
	const keys = 50
	k, _ := compactingRoot(t, 4, keys)

	var got []kv.KeyValue
	var pages, restarts int
	var pageRev int64
	rev, err := k.ListPages(ctx, "k/", func(page []kv.KeyValue, r int64, restart bool) error {
		pages++
		if restart {
			restarts++
			got = nil
		} else if pageRev != 0 {
			equal(t, pageRev, r, "every page of an attempt is read at one revision")
		}
		pageRev = r
		got = append(got, page...)
		return nil
	})
	noError(t, err)
	equal(t, pageRev, rev, "the revision returned is the last attempt's")
	equal(t, keys, len(got))
	for i, x := range got {
		equal(t, fmt.Sprintf("k/%04d", i), x.Key, "sorted by key")
		isTrue(t, x.ModRevision <= rev, "mod revision %d above list revision %d", x.ModRevision, rev)
	}
	isTrue(t, restarts >= 3, "only %d restarts in %d pages: the test did not compact between pages", restarts, pages)

	// An error from fn ends the read, as it is, with no further call.
	stop := fmt.Errorf("stop here")
	calls := 0
	_, err = k.ListPages(ctx, "k/", func([]kv.KeyValue, int64, bool) error {
		calls++
		return stop
	})
	isError(t, err, stop)
	equal(t, 1, calls)
}

// Without compaction, ListPages reads several pages, hands each over in
// order, never with restart, all at one revision.
func TestListPagesInOrder(t *testing.T) {
	ctx := testContext(t)
	k := newKV(t, etcdkv.WithListPageSize(3), etcdkv.WithRangeStream(false))
	putKeys(t, k, "p/", 10)
	var sizes []int
	var keys []string
	rev, err := k.ListPages(ctx, "p/", func(page []kv.KeyValue, r int64, restart bool) error {
		isTrue(t, !restart, "restart without a compaction")
		sizes = append(sizes, len(page))
		for _, x := range page {
			keys = append(keys, x.Key)
		}
		return nil
	})
	noError(t, err)
	isTrue(t, rev > 0, "revision %d", rev)
	equal(t, "[3 3 3 1]", fmt.Sprint(sizes), "page sizes")
	for i, key := range keys {
		equal(t, fmt.Sprintf("p/%04d", i), key, "sorted by key")
	}
}

// compactingRoot returns a KV with list pages of page keys on a fresh root
// holding keys keys k/0000.., whose client compacts the server after every
// page that has more after it (see compactingKV).
func compactingRoot(t *testing.T, page, keys int) (*etcdkv.KV, *compactingKV) {
	t.Helper()
	c, err := srv.Client()
	noError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	root := testRoot(t)
	ckv := &compactingKV{KV: c.KV, bump: root + "-bump"}
	c.KV = ckv
	k := newKVAt(t, c, root, etcdkv.WithListPageSize(page), etcdkv.WithRangeStream(false))
	putKeys(t, k, "k/", keys)
	return k, ckv
}

// streamCompactingKV compacts the server once, just before the first
// RangeStream starts: the revision it was pinned to is compacted away, as
// a compaction between its chunks would.
type streamCompactingKV struct {
	clientv3.KV
	bump    string
	streams atomic.Int64
}

func (c *streamCompactingKV) GetStream(ctx context.Context, key string, opts ...clientv3.OpOption) (clientv3.GetStreamChan, error) {
	if c.streams.Add(1) == 1 {
		put, err := c.KV.Put(ctx, c.bump, "x")
		if err != nil {
			return nil, err
		}
		if _, err := c.KV.Compact(ctx, put.Header.Revision); err != nil {
			return nil, err
		}
	}
	return c.KV.GetStream(ctx, key, opts...)
}

// A stream whose revision is compacted starts over in pages, with restart
// set (pages cannot be outrun by compaction, see above), and ends with
// exactly the prefix at the revision returned.
func TestListStreamCompactedStartsOverInPages(t *testing.T) {
	ctx := testContext(t)
	c, err := srv.Client()
	noError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	root := testRoot(t)
	skv := &streamCompactingKV{KV: c.KV, bump: root + "-bump"}
	c.KV = skv
	k := newKVAt(t, c, root, etcdkv.WithListPageSize(7))
	const keys = 100
	putKeys(t, k, "k/", keys)

	var got []kv.KeyValue
	restarts := 0
	rev, err := k.ListPages(ctx, "k/", func(page []kv.KeyValue, _ int64, restart bool) error {
		if restart {
			restarts++
			got = nil
		}
		got = append(got, page...)
		return nil
	})
	noError(t, err)
	equal(t, int64(1), skv.streams.Load(), "streams")
	equal(t, 1, restarts, "restarts")
	equal(t, keys, len(got))
	for i, x := range got {
		equal(t, fmt.Sprintf("k/%04d", i), x.Key, "sorted by key")
		isTrue(t, x.ModRevision <= rev, "mod revision %d above list revision %d", x.ModRevision, rev)
	}
}

// A server that does not serve RangeStream (etcd before 3.7) answers
// Unimplemented: List pages instead, every key at one revision, and does
// not try the stream again.
func TestListWithoutRangeStreamPages(t *testing.T) {
	ctx := testContext(t)
	var streams atomic.Int64
	refuse := func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		if strings.HasSuffix(method, "/RangeStream") {
			streams.Add(1)
			return nil, status.Error(codes.Unimplemented, "unknown method RangeStream")
		}
		return streamer(ctx, desc, cc, method, opts...)
	}
	c, err := srv.Client(func(cfg *clientv3.Config) {
		cfg.DialOptions = append(cfg.DialOptions, grpc.WithChainStreamInterceptor(refuse))
	})
	noError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	k := newKVAt(t, c, testRoot(t), etcdkv.WithListPageSize(3))
	putKeys(t, k, "p/", 10)
	for range 2 {
		var sizes []int
		_, err := k.ListPages(ctx, "p/", func(page []kv.KeyValue, _ int64, restart bool) error {
			isTrue(t, !restart, "restart without a compaction")
			sizes = append(sizes, len(page))
			return nil
		})
		noError(t, err)
		equal(t, "[3 3 3 1]", fmt.Sprint(sizes), "page sizes")
	}
	equal(t, int64(1), streams.Load(), "RangeStream attempts")
}

// By default a List streams: one stream, no pages of the configured size,
// and the chunks in key order at one revision.
func TestListStreams(t *testing.T) {
	ctx := testContext(t)
	c, err := srv.Client()
	noError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	ckv := &compactingKV{KV: c.KV, bump: "unused"}
	c.KV = ckv
	k := newKVAt(t, c, testRoot(t), etcdkv.WithListPageSize(3))
	putKeys(t, k, "p/", 100)
	var keys []string
	var revs []int64
	rev, err := k.ListPages(ctx, "p/", func(page []kv.KeyValue, r int64, restart bool) error {
		isTrue(t, !restart, "restart without a compaction")
		revs = append(revs, r)
		for _, x := range page {
			keys = append(keys, x.Key)
		}
		return nil
	})
	noError(t, err)
	equal(t, int64(0), ckv.compactions.Load(), "paged reads (Get with More)")
	equal(t, 100, len(keys))
	for i, key := range keys {
		equal(t, fmt.Sprintf("p/%04d", i), key, "sorted by key")
	}
	for _, r := range revs {
		equal(t, rev, r, "every chunk at the list's revision")
	}
	// An empty prefix is one empty page.
	calls := 0
	_, err = k.ListPages(ctx, "none/", func(page []kv.KeyValue, _ int64, _ bool) error {
		calls++
		equal(t, 0, len(page))
		return nil
	})
	noError(t, err)
	equal(t, 1, calls, "calls for an empty prefix")
}

// cutStream passes left messages of a RangeStream, then fails as a server
// going away (a leader change, a member restart) fails it: Unavailable.
type cutStream struct {
	grpc.ClientStream
	left int
}

func (s *cutStream) RecvMsg(m any) error {
	if s.left == 0 {
		return status.Error(codes.Unavailable, "injected: transport is closing")
	}
	s.left--
	return s.ClientStream.RecvMsg(m)
}

// A stream cut by Unavailable mid-way, or before its first chunk, resumes
// after the last key given, at the same revision: List returns every key
// once, in order, with no restart, as the paged List did (clientv3 retries
// a Range on Unavailable, but never a RangeStream).
func TestListStreamResumesAfterUnavailable(t *testing.T) {
	for _, after := range []int{2, 0} {
		t.Run(fmt.Sprintf("cut after %d chunks", after), func(t *testing.T) {
			ctx := testContext(t)
			var streams atomic.Int64
			cut := func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
				s, err := streamer(ctx, desc, cc, method, opts...)
				if err != nil || !strings.HasSuffix(method, "/RangeStream") {
					return s, err
				}
				if streams.Add(1) == 1 {
					return &cutStream{ClientStream: s, left: after}, nil
				}
				return s, nil
			}
			c, err := srv.Client(func(cfg *clientv3.Config) {
				cfg.DialOptions = append(cfg.DialOptions, grpc.WithChainStreamInterceptor(cut))
			})
			noError(t, err)
			t.Cleanup(func() { _ = c.Close() })
			k := newKVAt(t, c, testRoot(t))
			const keys = 100
			putKeys(t, k, "p/", keys)

			var got []string
			var revs []int64
			rev, err := k.ListPages(ctx, "p/", func(page []kv.KeyValue, r int64, restart bool) error {
				isTrue(t, !restart, "restart without a compaction")
				revs = append(revs, r)
				for _, x := range page {
					got = append(got, x.Key)
				}
				return nil
			})
			noError(t, err)
			isTrue(t, streams.Load() >= 2, "the stream was not cut (%d streams)", streams.Load())
			equal(t, keys, len(got))
			for i, key := range got {
				equal(t, fmt.Sprintf("p/%04d", i), key, "every key once, sorted")
			}
			for _, r := range revs {
				equal(t, rev, r, "every chunk at the list's revision")
			}
		})
	}
}

// kv.Pager: on cancel ListPages returns ctx's error and calls fn no more,
// streamed or paged. A stream's chunks that were already on their way
// (buffered by gRPC and by clientv3's channel) were still handed to fn
// after fn cancelled, and when they were the rest of the prefix ListPages
// returned success.
func TestListPagesCancelCallsFnNoMore(t *testing.T) {
	for _, stream := range []bool{true, false} {
		t.Run(fmt.Sprintf("stream=%v", stream), func(t *testing.T) {
			ctx := testContext(t)
			c, err := srv.Client()
			noError(t, err)
			t.Cleanup(func() { _ = c.Close() })
			ckv := &countingKV{KV: c.KV, signal: make(chan struct{}, 1)}
			c.KV = ckv
			k := newKVAt(t, c, testRoot(t), etcdkv.WithListPageSize(10), etcdkv.WithRangeStream(stream))
			putKeys(t, k, "p/", 100)
			for range 20 {
				cctx, cancel := context.WithCancel(ctx)
				calls := 0
				base := ckv.arrived.Load()
				_, err := k.ListPages(cctx, "p/", func(page []kv.KeyValue, _ int64, _ bool) error {
					calls++
					if calls == 1 {
						// A second page (a read-ahead, a buffered chunk)
						// has reached the client before the cancel.
						ckv.waitArrived(t, base+2)
						cancel()
					}
					return nil
				})
				cancel()
				isError(t, err, context.Canceled)
				equal(t, 1, calls, "calls of fn, the first of which cancelled")
			}
		})
	}
}

// kv.Pager: an error from fn is returned as it is, streamed or paged, even
// when fn ended ctx first (a caller that learns it is deposed cancels its
// term and says why). The stream returned ctx's error instead: fn's error
// went through the conversion of etcd's errors, which puts a done
// context's first.
func TestListPagesReturnsFnErrorAsIs(t *testing.T) {
	for _, stream := range []bool{true, false} {
		t.Run(fmt.Sprintf("stream=%v", stream), func(t *testing.T) {
			ctx := testContext(t)
			k := newKV(t, etcdkv.WithListPageSize(10), etcdkv.WithRangeStream(stream))
			putKeys(t, k, "p/", 30)
			stop := fmt.Errorf("deposed")
			for _, cancelFirst := range []bool{false, true} {
				cctx, cancel := context.WithCancel(ctx)
				calls := 0
				_, err := k.ListPages(cctx, "p/", func([]kv.KeyValue, int64, bool) error {
					calls++
					if cancelFirst {
						cancel()
					}
					return stop
				})
				cancel()
				equal(t, stop, err, "the error of fn, as it is")
				equal(t, 1, calls)
			}
		})
	}
}

// An error from fn that wraps kv.ErrCompacted (fn read something of its
// own at an old revision) is fn's, returned as it is: it must not be taken
// for the compaction of the list's revision, which starts the read over
// and calls fn again.
func TestListPagesFnCompactedErrorIsFns(t *testing.T) {
	for _, stream := range []bool{true, false} {
		t.Run(fmt.Sprintf("stream=%v", stream), func(t *testing.T) {
			ctx := testContext(t)
			k := newKV(t, etcdkv.WithListPageSize(10), etcdkv.WithRangeStream(stream))
			putKeys(t, k, "p/", 30)
			mine := fmt.Errorf("fn's own read: %w", kv.ErrCompacted)
			calls := 0
			_, err := k.ListPages(ctx, "p/", func([]kv.KeyValue, int64, bool) error {
				if calls++; calls == 1 {
					return mine
				}
				return nil
			})
			equal(t, mine, err, "the error of fn, as it is")
			equal(t, 1, calls)
		})
	}
}

// putKeys writes n keys prefix0000, prefix0001, ... in one txn.
func putKeys(t *testing.T, k *etcdkv.KV, prefix string, n int) {
	t.Helper()
	var ops []kv.Op
	for i := range n {
		ops = append(ops, kv.OpPut(fmt.Sprintf("%s%04d", prefix, i), []byte("v")))
	}
	_, err := k.Txn(testContext(t), kv.Txn{Then: ops})
	noError(t, err)
}

// countingKV counts the list responses that reach the client: each paged
// Get and each RangeStream chunk, as it arrives.
type countingKV struct {
	clientv3.KV
	arrived atomic.Int64
	signal  chan struct{} // a token after each arrival (capacity 1)
}

func (c *countingKV) arrive() {
	c.arrived.Add(1)
	select {
	case c.signal <- struct{}{}:
	default:
	}
}

// waitArrived waits until n responses have arrived in all, for 30 s at most.
func (c *countingKV) waitArrived(t testing.TB, n int64) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for c.arrived.Load() < n {
		select {
		case <-c.signal:
		case <-deadline:
			t.Fatalf("%d list responses reached the client, want %d", c.arrived.Load(), n)
		}
	}
}

func (c *countingKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	resp, err := c.KV.Get(ctx, key, opts...)
	if err == nil && len(resp.Kvs) > 1 {
		c.arrive()
	}
	return resp, err
}

func (c *countingKV) GetStream(ctx context.Context, key string, opts ...clientv3.OpOption) (clientv3.GetStreamChan, error) {
	in, err := c.KV.GetStream(ctx, key, opts...)
	if err != nil {
		return in, err
	}
	out := make(chan clientv3.RangeStreamResponse, 1000)
	go func() {
		defer close(out)
		for r := range in {
			if r.Err() == nil && len(r.Kvs) > 0 {
				c.arrive()
			}
			out <- r
		}
	}()
	return out, nil
}
