package conformance_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/chanwatch/chanwatch/conformance"
	"github.com/chanwatch/chanwatch/internal/etcdembed"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/etcdkv"
	"github.com/chanwatch/chanwatch/kv/memkv"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if err := stopSharedEtcd(); err != nil {
		fmt.Fprintln(os.Stderr, "stopping the shared etcd server:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func TestKV(t *testing.T) {
	t.Run("mem", func(t *testing.T) { conformance.RunKV(t, memFactory) })
	t.Run("etcd", func(t *testing.T) { conformance.RunKV(t, etcdFactory(sharedEtcd(t))) })
	t.Run("raft", runRaft)
}

// memTxnBytes is the memkv limit the suites run under: far below the
// default, so the Limits scenarios exercise it with small values.
const memTxnBytes = 256 << 10

// memFactory gives each scenario a fresh in-memory store on a fake clock,
// with MaxTxnBytes memTxnBytes. The store's first handle stays with the
// factory; Open hands out more.
func memFactory(t testing.TB) conformance.Env {
	clock := clockwork.NewFakeClock()
	store := memkv.New(memkv.WithClock(clock), memkv.WithMaxTxnBytes(memTxnBytes))
	t.Cleanup(func() { closeHandle(t, store) })
	return conformance.Env{
		Open: func(t testing.TB) kv.Backend {
			c := store.NewClient()
			t.Cleanup(func() { closeHandle(t, c) })
			return c
		},
		Clock: clock,
	}
}

// closeHandle closes b at cleanup; scenarios may have closed it already.
func closeHandle(t testing.TB, b kv.Backend) {
	if err := b.Close(); err != nil && !errors.Is(err, kv.ErrClosed) {
		t.Errorf("close: %v", err)
	}
}

// The etcd scenarios share one in-process server per test binary: starting
// one per scenario would cost a second each.
var shared struct {
	once sync.Once
	dir  string
	srv  *etcdembed.Server
	err  error
}

// sharedEtcd starts the shared server on first use, with fast raft timers so
// 1s lease TTLs are allowed, and fsync off.
func sharedEtcd(t testing.TB) *etcdembed.Server {
	t.Helper()
	shared.once.Do(func() {
		shared.dir, shared.err = os.MkdirTemp("", "chanwatch-conformance-etcd-")
		if shared.err != nil {
			return
		}
		shared.srv, shared.err = etcdembed.Start(shared.dir, etcdembed.WithFastTimers(), etcdembed.WithUnsafeNoFsync(true))
	})
	if shared.err != nil {
		t.Fatalf("start the shared etcd server: %v", shared.err)
	}
	return shared.srv
}

func stopSharedEtcd() error {
	var err error
	if shared.srv != nil {
		err = shared.srv.Close()
	}
	if shared.dir != "" {
		err = errors.Join(err, os.RemoveAll(shared.dir))
	}
	return err
}

// runID keeps roots of separate runs (-count=N) on one server apart.
var runID = fmt.Sprintf("%x", time.Now().UnixNano())

// factoryCalls counts Factory calls per test, to give each its own root.
var factoryCalls = struct {
	sync.Mutex
	n map[string]int
}{n: map[string]int{}}

// etcdFactory gives each Env its own root on srv. The n-th Env of one test
// gets root ".../<test>/" + n × "r", so the second root has the first as a
// string prefix: a backend that confined keys by raw string prefix would
// leak between them, which the Prefix scenarios catch.
func etcdFactory(srv *etcdembed.Server) conformance.Factory {
	return func(t testing.TB) conformance.Env {
		factoryCalls.Lock()
		factoryCalls.n[t.Name()]++
		n := factoryCalls.n[t.Name()]
		factoryCalls.Unlock()
		root := fmt.Sprintf("chanwatch-conformance/%s/%s/%s", runID, t.Name(), strings.Repeat("r", n))
		return conformance.Env{
			Open: func(t testing.TB) kv.Backend {
				t.Helper()
				cli, err := srv.Client()
				if err != nil {
					t.Fatalf("etcd client: %v", err)
				}
				b, err := etcdkv.New(cli, root, etcdkv.WithMaxTxnOps(srv.MaxTxnOps()))
				if err != nil {
					_ = cli.Close()
					t.Fatalf("etcdkv.New: %v", err)
				}
				t.Cleanup(func() {
					closeHandle(t, b)
					if err := cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
						t.Errorf("close etcd client: %v", err)
					}
				})
				return b
			},
			// Nil: etcd's leases run on real time.
		}
	}
}
