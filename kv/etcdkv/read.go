package etcdkv

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
// kv.KV. On etcd 3.7 and later it reads one RangeStream pinned to the
// revision of a linearizable one-key read made first: chunks of a size the
// server picks, so no single response holds a huge prefix, and without the
// count of the rest of the range that a paged request makes etcd compute
// (see WithRangeStream). A stream cut by Unavailable resumes after the last
// key read, at the same revision. Otherwise (WithRangeStream(false), a
// server that answers Unimplemented, after which this KV pages for good, or
// a stream whose revision was compacted) it reads in pages of the
// configured size, each pinned to the first page's revision. If a
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
	// fn's error is returned as it is, whatever it wraps: one that wraps
	// kv.ErrCompacted is not the list's revision compacted.
	var fnErr error
	give := func(page []kv.KeyValue, rev int64, restart bool) error {
		fnErr = fn(page, rev, restart)
		return fnErr
	}
	attempt := 1
	if !k.noStream.Load() {
		rev, err := k.stream(ctx, prefix, give)
		switch {
		case fnErr != nil:
			return 0, fnErr
		case errors.Is(err, errNoStream):
			k.noStream.Store(true)
			k.logger.Info("the server does not serve RangeStream (etcd before 3.7?): listing in pages", zap.Error(err))
		case errors.Is(err, kv.ErrCompacted):
			// Pages from here on, as below: each attempt then needs
			// fewer requests, and finishes under any compaction rate.
			attempt = 2
			k.logger.Info("list revision compacted during the stream, starting over in pages",
				zap.String("prefix", prefix), zap.Int("page_size", k.pageSize), zap.Error(err))
		default:
			return rev, err
		}
	}
	page := k.pageSize
	for ; ; attempt++ {
		rev, err := k.list(ctx, prefix, page, func(kvs []kv.KeyValue, rev int64, first bool) error {
			return give(kvs, rev, first && attempt > 1)
		})
		if fnErr != nil {
			return 0, fnErr
		}
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
		err := ctx.Err() // a page read before the cancel is not given
		if err != nil {
			err = fmt.Errorf("etcdkv: %w", err)
		} else {
			err = fn(kvs, rev, first)
		}
		if err != nil {
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

// errNoStream: the server answered RangeStream with Unimplemented.
var errNoStream = errors.New("etcdkv: RangeStream not served")

// stream reads prefix with one RangeStream pinned to the revision of a
// linearizable read made first (the stream tells its revision only with
// its last chunk, and fn needs it with the first), calling fn with each
// chunk as a page, the first with restart false. It returns errNoStream,
// having called fn with nothing, when the server does not serve
// RangeStream; kv.ErrCompacted when the revision was compacted before the
// last chunk (fn then holds an incomplete prefix); fn's error as it is.
//
// clientv3 retries a Range that fails with Unavailable (a leader change, a
// member going away), but never a RangeStream: a stream cut that way
// resumes after the last key given, at the same revision, so fn sees each
// key once and the read is what one stream would have read. Up to
// maxStreamRetries cuts in a row without a chunk are retried, each after
// streamRetryWait, as clientv3 retries a Range.
func (k *KV) stream(ctx context.Context, prefix string, fn func(page []kv.KeyValue, rev int64, restart bool) error) (int64, error) {
	full := k.full(prefix)
	var rev int64
	err := k.call(ctx, false, func(ctx context.Context) error {
		resp, err := k.cli.Get(ctx, full) // one key: O(log n), for the revision
		if err == nil {
			rev = resp.Header.Revision
		}
		return err
	})
	if err != nil {
		return 0, err
	}
	end := clientv3.GetPrefixRangeEnd(full)
	from := full // the first key not given yet
	first := true
	// fn's error is returned as it is, not through call, whose conversion
	// of etcd's errors would put a done context's first.
	var fnErr error
	for failures := 0; ; {
		unsupported, progress := false, false
		err = k.call(ctx, false, func(ctx context.Context) error {
			sctx, cancel := context.WithCancel(ctx)
			ch, err := k.cli.GetStream(sctx, from, clientv3.WithRange(end), clientv3.WithRev(rev))
			if err != nil {
				cancel()
				unsupported = first && status.Code(err) == codes.Unimplemented
				return err
			}
			defer func() {
				cancel()
				for range ch { // the client's goroutine ends once drained
				}
			}()
			for r := range ch {
				if err := r.Err(); err != nil {
					unsupported = first && status.Code(err) == codes.Unimplemented
					return err
				}
				if len(r.Kvs) == 0 && !first {
					continue // the last chunk carries the header
				}
				kvs := make([]kv.KeyValue, len(r.Kvs))
				for i, ekv := range r.Kvs {
					kvs[i] = k.keyValue(ekv)
				}
				if len(r.Kvs) > 0 {
					from, progress = string(r.Kvs[len(r.Kvs)-1].Key)+"\x00", true
				}
				if err := ctx.Err(); err != nil {
					return err // chunks already on their way are not given
				}
				if fnErr = fn(kvs, rev, false); fnErr != nil {
					return fnErr
				}
				first = false
			}
			if first {
				if fnErr = fn(nil, rev, false); fnErr != nil {
					return fnErr
				}
			}
			return nil
		})
		if fnErr != nil {
			return 0, fnErr
		}
		if unsupported {
			return 0, fmt.Errorf("%w: %w", errNoStream, err)
		}
		if err == nil {
			return rev, nil
		}
		if !errors.Is(err, kv.ErrUnavailable) {
			return 0, err
		}
		if progress {
			failures = 0
		}
		if failures++; failures > maxStreamRetries {
			return 0, err
		}
		k.logger.Info("list stream cut, resuming after the last key read",
			zap.String("prefix", prefix), zap.Int64("revision", rev), zap.Int("failures", failures), zap.Error(err))
		t := time.NewTimer(streamRetryWait)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, fmt.Errorf("etcdkv: %w", ctx.Err())
		case <-k.closed.Done():
			t.Stop()
			return 0, errClosed
		case <-t.C:
		}
	}
}

// maxStreamRetries and streamRetryWait bound the resumption of a list
// stream cut by Unavailable, as clientv3 bounds its retries of a Range
// (100, about 25 ms apart).
const (
	maxStreamRetries = 100
	streamRetryWait  = 25 * time.Millisecond
)

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
