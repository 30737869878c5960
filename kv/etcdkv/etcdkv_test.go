package etcdkv_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/chanwatch/chanwatch/internal/etcdembed"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/etcdkv"
)

func TestNewValidatesConfig(t *testing.T) {
	_, err := etcdkv.New(nil, "root")
	anyError(t, err, "nil client")
	for _, root := range []string{"", "/", "//"} {
		_, err := etcdkv.New(cli, root)
		isError(t, err, kv.ErrInvalidKey, "root %q", root)
	}
	for name, opt := range map[string]etcdkv.Option{
		"zero max txn ops":    etcdkv.WithMaxTxnOps(0),
		"negative page size":  etcdkv.WithListPageSize(-1),
		"nil logger":          etcdkv.WithLogger(nil),
		"zero list page size": etcdkv.WithListPageSize(0),
	} {
		_, err := etcdkv.New(cli, "root", opt)
		anyError(t, err, name)
	}
	k, err := etcdkv.New(cli, "root", etcdkv.WithMaxTxnOps(7), etcdkv.WithLogger(zap.NewNop()))
	noError(t, err)
	equal(t, 7, k.MaxTxnOps())
	noError(t, k.Close())
	k, err = etcdkv.New(cli, "root")
	noError(t, err)
	equal(t, etcdkv.DefaultMaxTxnOps, k.MaxTxnOps())
	noError(t, k.Close())
}

// Roots nest by path segment, not by string prefix: "a/1" never sees
// "a/12", and keys are stored at root+"/"+key.
func TestRootIsolation(t *testing.T) {
	ctx := testContext(t)
	base := testRoot(t)
	one := newKVAt(t, cli, base+"/a/1/") // trailing '/' is trimmed
	twelve := newKVAt(t, cli, base+"/a/12")
	parent := newKVAt(t, cli, base+"/a")

	w := one.Watch(ctx, "", 0)
	mustPut(t, twelve, "x", "twelve")
	mustPut(t, twelve, "1x", "twelve")
	rev := mustPut(t, one, "x", "one")

	raw, err := cli.Get(ctx, base+"/a/1/x")
	noError(t, err)
	equal(t, 1, len(raw.Kvs), "key stored at root+/+key")
	equal(t, "one", string(raw.Kvs[0].Value))

	got, _, err := one.Get(ctx, "x")
	noError(t, err)
	equal(t, "x", got.Key, "keys are relative to the root")
	equal(t, "one", string(got.Value))

	kvs, _, err := one.List(ctx, "")
	noError(t, err)
	equal(t, []string{"x"}, keysOf(kvs))
	kvs, _, err = twelve.List(ctx, "")
	noError(t, err)
	equal(t, []string{"1x", "x"}, keysOf(kvs))
	// A prefix is a raw string prefix inside a root, and the parent root
	// sees its children as keys with their full relative path.
	kvs, _, err = parent.List(ctx, "1")
	noError(t, err)
	equal(t, []string{"1/x", "12/1x", "12/x"}, keysOf(kvs))
	kvs, _, err = parent.List(ctx, "1/")
	noError(t, err)
	equal(t, []string{"1/x"}, keysOf(kvs))

	// The first event root "a/1" sees is its own write, not "a/12"'s.
	r := recv(t, w)
	noError(t, r.Err)
	equal(t, 1, len(r.Events))
	equal(t, kv.EventPut, r.Events[0].Type)
	equal(t, "x", r.Events[0].KV.Key)
	equal(t, rev, r.Events[0].Revision())
}

// List pages through a prefix bigger than its page size, and every page is
// read at the first page's revision even while writers add keys.
func TestListPaginatesAtOneRevision(t *testing.T) {
	ctx := testContext(t)
	k := newKV(t, etcdkv.WithListPageSize(3))
	const preload = 40
	for i := 0; i < preload; i += 10 {
		var ops []kv.Op
		for j := i; j < i+10; j++ {
			ops = append(ops, kv.OpPut(fmt.Sprintf("k/%04d", j), []byte("v")))
		}
		_, err := k.Txn(ctx, kv.Txn{Then: ops})
		noError(t, err)
	}
	kvs, base, err := k.List(ctx, "k/")
	noError(t, err)
	equal(t, preload, len(kvs))
	for i, x := range kvs {
		equal(t, fmt.Sprintf("k/%04d", i), x.Key, "sorted by key")
	}

	// Each write adds one key at one revision, so a List at revision r
	// holds exactly preload + (r - base) keys. A List whose later pages read
	// a newer revision would see more keys than its revision allows.
	const writes = 150
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	defer wg.Wait()
	go func() {
		defer wg.Done()
		defer close(done)
		for i := preload; i < preload+writes; i++ {
			if _, err := kv.Put(ctx, k, fmt.Sprintf("k/%04d", i), []byte("v")); err != nil {
				t.Errorf("concurrent put: %v", err)
				return
			}
		}
	}()
	for lists := 0; ; lists++ {
		select {
		case <-done:
			t.Logf("%d lists during %d writes", lists, writes)
			return
		default:
		}
		kvs, rev, err := k.List(ctx, "k/")
		noError(t, err)
		equal(t, preload+int(rev-base), len(kvs), "keys in a list at revision %d", rev)
		for _, x := range kvs {
			isTrue(t, x.ModRevision <= rev, "mod revision %d above list revision %d", x.ModRevision, rev)
		}
	}
}

// An oversized Txn fails with ErrTxnTooLarge and writes nothing, whether the
// KV's limit or the server's rejects it.
func TestTxnTooLarge(t *testing.T) {
	ctx := testContext(t)
	ops := func(n int) []kv.Op {
		out := make([]kv.Op, n)
		for i := range out {
			out[i] = kv.OpPut(fmt.Sprintf("k%d", i), []byte("v"))
		}
		return out
	}

	// The server allows 128: a 5-op Txn can only be refused by the KV, so
	// before any request was sent.
	small := newKV(t, etcdkv.WithMaxTxnOps(4))
	_, rev0, err := small.List(ctx, "")
	noError(t, err)
	_, err = small.Txn(ctx, kv.Txn{Then: ops(5)})
	isError(t, err, kv.ErrTxnTooLarge)
	_, err = small.Txn(ctx, kv.Txn{Then: ops(1), Else: ops(5)})
	isError(t, err, kv.ErrTxnTooLarge)
	kvs, rev1, err := small.List(ctx, "")
	noError(t, err)
	equal(t, 0, len(kvs))
	equal(t, rev0, rev1, "nothing written")
	r, err := small.Txn(ctx, kv.Txn{Then: ops(4)})
	noError(t, err, "a Txn at the limit is accepted")
	equal(t, rev1+1, r.Revision)

	// A KV configured above the server's --max-txn-ops: the server refuses
	// and the error maps onto the same sentinel.
	big := newKVAt(t, cli, testRoot(t)+"-big", etcdkv.WithMaxTxnOps(srv.MaxTxnOps()+1))
	_, err = big.Txn(ctx, kv.Txn{Then: ops(srv.MaxTxnOps() + 1)})
	isError(t, err, kv.ErrTxnTooLarge)
	notError(t, err, kv.ErrUnknownOutcome, "a refused Txn has a known outcome")
	kvs, _, err = big.List(ctx, "")
	noError(t, err)
	equal(t, 0, len(kvs))
}

func TestTxnMapsComparesAndOps(t *testing.T) {
	ctx := testContext(t)
	k := newKV(t)
	rev := mustPut(t, k, "a", "m")
	mustPut(t, k, "a", "m") // version 2, create revision rev

	for _, c := range []struct {
		cmp  kv.Cmp
		want bool
	}{
		{kv.CmpValue("a", kv.Equal, []byte("m")), true},
		{kv.CmpValue("a", kv.NotEqual, []byte("m")), false},
		{kv.CmpValue("a", kv.Less, []byte("n")), true},
		{kv.CmpValue("a", kv.Greater, []byte("n")), false},
		{kv.CmpValue("missing", kv.NotEqual, []byte("m")), false},
		{kv.CmpVersion("a", kv.Equal, 2), true},
		{kv.CmpVersion("a", kv.Greater, 2), false},
		{kv.CmpCreateRevision("a", kv.Equal, rev), true},
		{kv.CmpCreateRevision("a", kv.Less, rev), false},
		{kv.CmpModRevision("a", kv.Greater, rev), true},
		{kv.CmpModRevision("a", kv.NotEqual, rev+1), false},
		{kv.CmpMissing("missing"), true},
		{kv.CmpExists("missing"), false},
	} {
		r, err := k.Txn(ctx, kv.Txn{If: []kv.Cmp{c.cmp}})
		noError(t, err, "%v", c.cmp)
		equal(t, c.want, r.Succeeded, "%v", c.cmp)
	}

	lease, err := k.Grant(ctx, 5*time.Second)
	noError(t, err)
	r, err := k.Txn(ctx, kv.Txn{
		If:   []kv.Cmp{kv.CmpVersion("a", kv.Equal, 2)},
		Then: []kv.Op{kv.OpPutLease("b", []byte("x"), lease), kv.OpGet("b"), kv.OpDelete("a"), kv.OpDelete("none"), kv.OpGet("none")},
	})
	noError(t, err)
	isTrue(t, r.Succeeded)
	equal(t, 5, len(r.Responses))
	isTrue(t, r.Responses[1].KV != nil, "get of b found nothing")
	equal(t, kv.KeyValue{Key: "b", Value: []byte("x"), CreateRevision: r.Revision, ModRevision: r.Revision, Version: 1, Lease: lease}, *r.Responses[1].KV)
	equal(t, int64(1), r.Responses[2].Deleted)
	equal(t, int64(0), r.Responses[3].Deleted)
	isTrue(t, r.Responses[4].KV == nil, "get of a missing key returned %v", r.Responses[4].KV)

	// A failed compare runs Else; a read-only Txn reports the read revision.
	r2, err := k.Txn(ctx, kv.Txn{If: []kv.Cmp{kv.CmpExists("a")}, Else: []kv.Op{kv.OpGet("b")}})
	noError(t, err)
	isTrue(t, !r2.Succeeded, "compare on a deleted key held")
	equal(t, r.Revision, r2.Revision)
	equal(t, "b", r2.Responses[0].KV.Key)
}

func TestLeaseErrors(t *testing.T) {
	ctx := testContext(t)
	k := newKV(t)
	_, err := k.Grant(ctx, 0)
	isError(t, err, kv.ErrInvalidTTL)
	_, err = k.Grant(ctx, -time.Second)
	isError(t, err, kv.ErrInvalidTTL)

	// 1.2s rounds up to 2s (etcd counts whole seconds).
	id, err := k.Grant(ctx, 1200*time.Millisecond)
	noError(t, err)
	ttl, err := k.KeepAliveOnce(ctx, id)
	noError(t, err)
	equal(t, 2*time.Second, ttl)
	left, err := k.TimeToLive(ctx, id)
	noError(t, err)
	isTrue(t, left > 0 && left <= 2*time.Second, "time to live %v", left)

	noError(t, k.Revoke(ctx, id))
	_, err = k.KeepAliveOnce(ctx, id)
	isError(t, err, kv.ErrLeaseNotFound)
	_, err = k.TimeToLive(ctx, id)
	isError(t, err, kv.ErrLeaseNotFound)
	err = k.Revoke(ctx, id)
	isError(t, err, kv.ErrLeaseNotFound)
	notError(t, err, kv.ErrUnknownOutcome)
	_, err = k.Txn(ctx, kv.Txn{Then: []kv.Op{kv.OpPutLease("k", []byte("v"), id)}})
	isError(t, err, kv.ErrLeaseNotFound)
	_, _, err = k.Get(ctx, "k")
	isError(t, err, kv.ErrKeyNotFound, "a put on a missing lease writes nothing")
}

func TestGetMissingKeyReturnsRevision(t *testing.T) {
	ctx := testContext(t)
	k := newKV(t)
	rev := mustPut(t, k, "present", "v")
	_, got, err := k.Get(ctx, "absent")
	isError(t, err, kv.ErrKeyNotFound)
	isTrue(t, got >= rev, "revision %d of a failed get, want >= %d", got, rev)
	_, _, err = k.Get(ctx, "/abs")
	isError(t, err, kv.ErrInvalidKey)
	_, _, err = k.List(ctx, "/abs")
	isError(t, err, kv.ErrInvalidKey)
	isError(t, recvFinal(t, k.Watch(ctx, "/abs", 0)), kv.ErrInvalidKey)
}

// Watch from a revision delivers that revision's events and nothing older;
// from 0 it delivers a write made right after Watch returns.
func TestWatchStartRevision(t *testing.T) {
	ctx := testContext(t)
	k := newKV(t)
	mustPut(t, k, "a", "1")
	rev := mustPut(t, k, "b", "1")
	r := recv(t, k.Watch(ctx, "", rev))
	noError(t, r.Err)
	equal(t, 1, len(r.Events))
	equal(t, "b", r.Events[0].KV.Key)
	equal(t, rev, r.Events[0].Revision())

	w := k.Watch(ctx, "", 0)
	_, _, err := kv.Delete(ctx, k, "a") // no wait for the watch to register
	noError(t, err)
	r = recv(t, w)
	noError(t, r.Err)
	equal(t, 1, len(r.Events))
	equal(t, kv.Event{Type: kv.EventDelete, KV: kv.KeyValue{Key: "a", ModRevision: rev + 1}}, r.Events[0])

	// Cancelling ends the watch with no error response.
	wctx, cancel := context.WithCancel(ctx)
	w = k.Watch(wctx, "", 0)
	cancel()
	waitClosed(t, w)
}

// A watch at or below the compact revision ends with a *kv.CompactedError
// carrying it; compaction is cluster-wide, which the other tests tolerate
// because each watches only revisions it just wrote.
func TestCompaction(t *testing.T) {
	ctx := testContext(t)
	k := newKV(t)
	mustPut(t, k, "a", "1")
	mustPut(t, k, "a", "2")
	rev := mustPut(t, k, "a", "3")
	noError(t, k.Compact(ctx, rev))

	for _, from := range []int64{rev - 1, rev} {
		err := recvFinal(t, k.Watch(ctx, "", from))
		isError(t, err, kv.ErrCompacted, "watch from %d", from)
		equal(t, rev, kv.CompactRevision(err), "watch from %d", from)
	}

	// Compacting again at or below it: a *CompactedError with the revision.
	err := k.Compact(ctx, rev)
	isError(t, err, kv.ErrCompacted)
	notError(t, err, kv.ErrUnknownOutcome)
	equal(t, rev, kv.CompactRevision(err))
	isError(t, k.Compact(ctx, rev+1000), kv.ErrFutureRev)

	// The state at the compact revision and after it stays readable and
	// watchable.
	w := k.Watch(ctx, "", rev+1)
	next := mustPut(t, k, "a", "4")
	r := recv(t, w)
	noError(t, r.Err)
	equal(t, next, r.Events[0].Revision())
	got, _, err := k.Get(ctx, "a")
	noError(t, err)
	equal(t, "4", string(got.Value))
}

// Close ends watches with ErrClosed, fails later calls with ErrClosed, and
// leaves the caller's client open.
func TestCloseKeepsClient(t *testing.T) {
	ctx := testContext(t)
	k, err := etcdkv.New(cli, testRoot(t))
	noError(t, err)
	lease, err := k.Grant(ctx, 5*time.Second)
	noError(t, err)
	w := k.Watch(ctx, "", 0)

	noError(t, k.Close())
	noError(t, k.Close(), "Close is idempotent")
	isError(t, recvFinal(t, w), kv.ErrClosed)

	_, _, err = k.Get(ctx, "k")
	isError(t, err, kv.ErrClosed)
	_, _, err = k.List(ctx, "")
	isError(t, err, kv.ErrClosed)
	_, err = kv.Put(ctx, k, "k", nil)
	isError(t, err, kv.ErrClosed)
	_, err = k.Grant(ctx, time.Second)
	isError(t, err, kv.ErrClosed)
	_, err = k.KeepAliveOnce(ctx, lease)
	isError(t, err, kv.ErrClosed)
	isError(t, k.Revoke(ctx, lease), kv.ErrClosed)
	_, err = k.TimeToLive(ctx, lease)
	isError(t, err, kv.ErrClosed)
	isError(t, k.Compact(ctx, 1), kv.ErrClosed)
	isError(t, recvFinal(t, k.Watch(ctx, "", 0)), kv.ErrClosed)

	_, err = cli.Get(ctx, "anything")
	noError(t, err, "the caller's client still works")
}

// A client closed by its owner under the KV: calls and watches end with
// ErrClosed.
func TestClosedClient(t *testing.T) {
	ctx := testContext(t)
	c, err := srv.Client()
	noError(t, err)
	k := newKVAt(t, c, testRoot(t))
	mustPut(t, k, "k", "v")
	w := k.Watch(ctx, "", 0)
	noError(t, c.Close())

	isError(t, recvFinal(t, w), kv.ErrClosed)
	_, _, err = k.Get(ctx, "k")
	isError(t, err, kv.ErrClosed)
	_, err = kv.Put(ctx, k, "k", nil)
	isError(t, err, kv.ErrClosed)
}

// Against a stopped server, calls return once their deadline passes, with
// the context's error (clientv3 waits for a connection) or ErrUnavailable,
// and writes say their outcome is unknown.
func TestStoppedServer(t *testing.T) {
	down := etcdembed.NewForTest(t)
	c, err := down.Client()
	noError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	k := newKVAt(t, c, testRoot(t))
	mustPut(t, k, "k", "v")
	noError(t, down.Close())

	unreachable := func(err error) bool {
		return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, kv.ErrUnavailable)
	}
	const deadline = 500 * time.Millisecond
	ctx, cancel := context.WithTimeout(t.Context(), deadline)
	defer cancel()
	start := time.Now()
	_, _, err = k.Get(ctx, "k")
	isTrue(t, unreachable(err), "get: %v", err)
	isTrue(t, time.Since(start) < deadline+2*time.Second, "get took %v", time.Since(start))

	ctx, cancel = context.WithTimeout(t.Context(), deadline)
	defer cancel()
	start = time.Now()
	_, err = kv.Put(ctx, k, "k", []byte("w"))
	isTrue(t, unreachable(err), "put: %v", err)
	isError(t, err, kv.ErrUnknownOutcome)
	isTrue(t, time.Since(start) < deadline+2*time.Second, "put took %v", time.Since(start))

	ctx, cancel = context.WithTimeout(t.Context(), deadline)
	defer cancel()
	_, err = k.KeepAliveOnce(ctx, 1)
	isTrue(t, unreachable(err), "keep-alive: %v", err)

	// Close interrupts a call that waits for the server.
	errc := make(chan error, 1)
	go func() {
		_, err := k.KeepAliveOnce(t.Context(), 1)
		errc <- err
	}()
	noError(t, k.Close())
	select {
	case err := <-errc:
		isError(t, err, kv.ErrClosed)
	case <-time.After(waitTimeout):
		t.Fatal("Close did not interrupt a pending call")
	}

	// A done context fails at once, before anything is sent.
	done, cancelDone := context.WithCancel(t.Context())
	cancelDone()
	k2 := newKVAt(t, c, testRoot(t))
	_, err = kv.Put(done, k2, "k", nil)
	isError(t, err, context.Canceled)
	notError(t, err, kv.ErrUnknownOutcome)
}

// TestSizeRefusalsAreTxnTooLarge: when the KV is told larger limits than the
// client or the server really has, the engine's own refusals still come back
// as kv.ErrTxnTooLarge (never an unknown outcome) and nothing is written.
func TestSizeRefusalsAreTxnTooLarge(t *testing.T) {
	ctx := testContext(t)
	big := func(n int) kv.Txn {
		return kv.Txn{Then: []kv.Op{kv.OpPut("big", make([]byte, n))}}
	}
	t.Run("ClientSendLimit", func(t *testing.T) {
		// The client refuses to send anything over 512 KiB.
		small, err := srv.Client(func(c *clientv3.Config) { c.MaxCallSendMsgSize = 512 << 10 })
		if err != nil {
			t.Fatal(err)
		}
		defer small.Close()
		k := newKVAt(t, small, testRoot(t))
		_, err = k.Txn(ctx, big(1<<20))
		if !errors.Is(err, kv.ErrTxnTooLarge) || errors.Is(err, kv.ErrUnknownOutcome) {
			t.Fatalf("1 MiB txn through a 512 KiB client: got %v, want ErrTxnTooLarge (and a known outcome)", err)
		}
		// Told the truth, the KV refuses it before sending and fits under it.
		k = newKVAt(t, small, testRoot(t), etcdkv.WithMaxCallSendMsgSize(512<<10))
		if m := k.MaxTxnBytes(); m >= 512<<10 || m < 256<<10 {
			t.Fatalf("MaxTxnBytes %d with a 512 KiB send limit", m)
		}
		if _, err := k.Txn(ctx, big(k.MaxTxnBytes()-kv.TxnEntryOverhead-len("big"))); err != nil {
			t.Fatalf("a txn of exactly MaxTxnBytes: %v", err)
		}
	})
	t.Run("ServerRequestLimit", func(t *testing.T) {
		// The client would send 4 MiB; etcd's --max-request-bytes is 1.5 MiB.
		wide, err := srv.Client(func(c *clientv3.Config) { c.MaxCallSendMsgSize = 4 << 20 })
		if err != nil {
			t.Fatal(err)
		}
		defer wide.Close()
		k := newKVAt(t, wide, testRoot(t), etcdkv.WithMaxCallSendMsgSize(4<<20), etcdkv.WithMaxRequestBytes(4<<20))
		_, err = k.Txn(ctx, big(1700<<10))
		if !errors.Is(err, kv.ErrTxnTooLarge) || errors.Is(err, kv.ErrUnknownOutcome) {
			t.Fatalf("1.7 MiB txn to a 1.5 MiB server: got %v, want ErrTxnTooLarge", err)
		}
		if _, _, err := k.Get(ctx, "big"); !errors.Is(err, kv.ErrKeyNotFound) {
			t.Fatalf("refused txn wrote: %v", err)
		}
	})
}
