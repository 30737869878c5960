package etcdembed_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/chanwatch/chanwatch/internal/etcdembed"
)

func TestServerServesAndHonoursOptions(t *testing.T) {
	srv := etcdembed.NewForTest(t, etcdembed.WithMaxTxnOps(4))
	if got := srv.MaxTxnOps(); got != 4 {
		t.Fatalf("MaxTxnOps() = %d, want 4", got)
	}
	if got := srv.MinLeaseTTL(); got != time.Second {
		t.Fatalf("MinLeaseTTL() = %v with fast timers, want 1s", got)
	}
	cli, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("put: %v", err)
	}
	resp, err := cli.Get(ctx, "k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("get = %v, %v", resp, err)
	}

	// The server enforces its --max-txn-ops.
	ops := make([]clientv3.Op, 5)
	for i := range ops {
		ops[i] = clientv3.OpPut(string(rune('a'+i)), "x")
	}
	if _, err := cli.Txn(ctx).Then(ops...).Commit(); !errors.Is(err, rpctypes.ErrTooManyOps) {
		t.Fatalf("txn of 5 ops with max 4: err = %v, want %v", err, rpctypes.ErrTooManyOps)
	}

	// Fast timers make a 1s lease possible.
	lease, err := cli.Grant(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if lease.TTL != 1 {
		t.Fatalf("granted TTL = %d, want 1", lease.TTL)
	}
}

func TestRestartKeepsDataAndCloseIsIdempotent(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	srv, err := etcdembed.Start(dir, etcdembed.WithFastTimers())
	if err != nil {
		t.Fatal(err)
	}
	cli, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "durable", "yes"); err != nil {
		t.Fatal(err)
	}
	cli.Close()
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	srv, err = etcdembed.Start(dir, etcdembed.WithFastTimers())
	if err != nil {
		t.Fatalf("restart on the same dir: %v", err)
	}
	defer srv.Close()
	cli, err = srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(ctx, "durable")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "yes" {
		t.Fatalf("after restart get = %v, %v", resp, err)
	}
}

func TestStartRejectsBadConfig(t *testing.T) {
	dir := t.TempDir()
	for name, opts := range map[string][]etcdembed.Option{
		"election below 5 heartbeats": {etcdembed.WithTimers(100*time.Millisecond, 400*time.Millisecond)},
		"sub-millisecond heartbeat":   {etcdembed.WithTimers(500*time.Microsecond, time.Second)},
		"zero max txn ops":            {etcdembed.WithMaxTxnOps(0)},
		"negative quota":              {etcdembed.WithQuotaBytes(-1)},
		"nil logger":                  {etcdembed.WithLogger(nil)},
		"zero start timeout":          {etcdembed.WithStartTimeout(0)},
	} {
		if _, err := etcdembed.Start(dir, opts...); err == nil {
			t.Errorf("%s: Start succeeded, want an error", name)
		}
	}
	if _, err := etcdembed.Start(""); err == nil {
		t.Error("empty dir: Start succeeded, want an error")
	}
}
