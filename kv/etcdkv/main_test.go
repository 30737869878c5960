package etcdkv_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/chanwatch/chanwatch/internal/etcdembed"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/etcdkv"
)

// One embedded etcd per test binary (starting one is the slow part, more so
// under -race); each test works under its own root. Tests do not run in
// parallel: several check exact revisions, and the revision is the server's.
var (
	srv *etcdembed.Server
	cli *clientv3.Client
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "etcdkv-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	srv, err = etcdembed.Start(dir, etcdembed.WithFastTimers(), etcdembed.WithUnsafeNoFsync(true))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer srv.Close()
	cli, err = srv.Client()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer cli.Close()
	return m.Run()
}

// rootSeq makes roots unique per call, so -count=N reruns start empty.
var rootSeq atomic.Int64

// testRoot is a root no other test (or rerun) uses.
func testRoot(t testing.TB) string {
	return fmt.Sprintf("etcdkv-test/%d-%s", rootSeq.Add(1), strings.ReplaceAll(t.Name(), "/", "_"))
}

// newKV returns a KV on the shared client under the test's own root.
func newKV(t testing.TB, opts ...etcdkv.Option) *etcdkv.KV {
	t.Helper()
	return newKVAt(t, cli, testRoot(t), opts...)
}

func newKVAt(t testing.TB, c *clientv3.Client, root string, opts ...etcdkv.Option) *etcdkv.KV {
	t.Helper()
	k, err := etcdkv.New(c, root, opts...)
	if err != nil {
		t.Fatalf("New(%q): %v", root, err)
	}
	t.Cleanup(func() { _ = k.Close() })
	return k
}

// testContext bounds a test's calls that are expected to succeed.
func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

const waitTimeout = 10 * time.Second

// recv returns the next response on ch, failing t if none comes in time or
// ch is closed.
func recv(t testing.TB, ch kv.WatchChan) kv.WatchResponse {
	t.Helper()
	select {
	case r, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed, want a response")
		}
		return r
	case <-time.After(waitTimeout):
		t.Fatalf("no watch response within %v", waitTimeout)
	}
	panic("unreachable")
}

// recvFinal reads the watch's final error response and checks the channel
// closes after it.
func recvFinal(t testing.TB, ch kv.WatchChan) error {
	t.Helper()
	r := recv(t, ch)
	if r.Err == nil {
		t.Fatalf("got events %v, want a final error", r.Events)
	}
	waitClosed(t, ch)
	return r.Err
}

// waitClosed fails t unless ch closes, with no further response, in time.
func waitClosed(t testing.TB, ch kv.WatchChan) {
	t.Helper()
	select {
	case r, ok := <-ch:
		if ok {
			t.Fatalf("got %+v, want the channel closed", r)
		}
	case <-time.After(waitTimeout):
		t.Fatalf("watch channel not closed within %v", waitTimeout)
	}
}

func mustPut(t testing.TB, k kv.KV, key, value string) int64 {
	t.Helper()
	rev, err := kv.Put(testContext(t), k, key, []byte(value))
	if err != nil {
		t.Fatalf("put %q: %v", key, err)
	}
	return rev
}

func keysOf(kvs []kv.KeyValue) []string {
	out := make([]string, len(kvs))
	for i, x := range kvs {
		out[i] = x.Key
	}
	return out
}

// Assertions. Each fails the test at once; msg is an optional format and
// its arguments.

func noError(t testing.TB, err error, msg ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%sunexpected error: %v", prefix(msg), err)
	}
}

func anyError(t testing.TB, err error, msg ...any) {
	t.Helper()
	if err == nil {
		t.Fatalf("%sgot no error, want one", prefix(msg))
	}
}

func isError(t testing.TB, err, target error, msg ...any) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%serror %v, want errors.Is %v", prefix(msg), err, target)
	}
}

func notError(t testing.TB, err, target error, msg ...any) {
	t.Helper()
	if errors.Is(err, target) {
		t.Fatalf("%serror %v, want it not to wrap %v", prefix(msg), err, target)
	}
}

func equal(t testing.TB, want, got any, msg ...any) {
	t.Helper()
	if !reflect.DeepEqual(want, got) {
		t.Fatalf("%sgot %#v, want %#v", prefix(msg), got, want)
	}
}

func isTrue(t testing.TB, cond bool, msg ...any) {
	t.Helper()
	if !cond {
		t.Fatalf("%scondition failed", prefix(msg))
	}
}

func prefix(msg []any) string {
	if len(msg) == 0 {
		return ""
	}
	return fmt.Sprintf(msg[0].(string), msg[1:]...) + ": "
}
