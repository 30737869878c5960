package etcdproc

import (
	"context"
	"errors"
	"os"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func put(t *testing.T, cli *clientv3.Client, k, v string) {
	t.Helper()
	// A put in flight to a member that was just killed fails; the client
	// does not retry a non-idempotent call, so the test does (same value).
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := cli.Put(ctx, k, v)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("put %s: %v", k, err)
		}
		<-time.After(50 * time.Millisecond)
	}
}

func get(t *testing.T, endpoint, k string) string {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, k) // linearizable: needs a quorum
	if err != nil {
		t.Fatalf("get %s from %s: %v", k, endpoint, err)
	}
	if len(resp.Kvs) != 1 {
		return ""
	}
	return string(resp.Kvs[0].Value)
}

// TestClusterLifecycle kills the leader, writes through the survivors,
// restarts the member from its data dir and reads the write from it; then
// freezes a member and resumes it.
func TestClusterLifecycle(t *testing.T) {
	c := NewForTest(t, 3)
	if c.Len() != 3 || len(c.Endpoints()) != 3 || c.MinLeaseTTL() != time.Second {
		t.Fatalf("len %d endpoints %v min ttl %v", c.Len(), c.Endpoints(), c.MinLeaseTTL())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cli, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	put(t, cli, "a", "1")

	lead, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Kill(lead); err != nil {
		t.Fatal(err)
	}
	if c.Running(lead) || c.Pid(lead) != 0 {
		t.Fatalf("member %d still running after Kill", lead)
	}
	if err := c.Kill(lead); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("second Kill: %v, want ErrNotRunning", err)
	}
	put(t, cli, "b", "2") // two of three keep a quorum
	newLead, err := c.Leader(ctx)
	if err != nil || newLead == lead {
		t.Fatalf("leader after kill: %d, %v (killed %d)", newLead, err, lead)
	}

	if err := c.Restart(lead); err != nil {
		t.Fatal(err)
	}
	if err := c.Restart(lead); !errors.Is(err, ErrRunning) {
		t.Fatalf("second Restart: %v, want ErrRunning", err)
	}
	if err := c.WaitHealthy(ctx, lead); err != nil {
		t.Fatal(err)
	}
	if got := get(t, c.Endpoint(lead), "b"); got != "2" {
		t.Fatalf("restarted member reads b=%q, want 2", got)
	}

	// Freeze a follower: the process lives but answers nothing.
	frozen := (newLead + 1) % 3
	if err := c.Stop(frozen); err != nil {
		t.Fatal(err)
	}
	if !c.Running(frozen) {
		t.Fatal("a stopped member must still count as running")
	}
	hctx, hcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	if c.Healthy(hctx, frozen) {
		t.Fatal("a SIGSTOPped member answered /health")
	}
	hcancel()
	put(t, cli, "c", "3")
	if err := c.Cont(frozen); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(ctx, frozen); err != nil {
		t.Fatal(err)
	}
	if got := get(t, c.Endpoint(frozen), "c"); got != "3" {
		t.Fatalf("resumed member reads c=%q, want 3", got)
	}

	// Terminate is a clean exit; Close reaps everything and is idempotent.
	if err := c.Terminate(frozen, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	pid := c.Pid(lead)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if p, _ := os.FindProcess(pid); p.Signal(syscall.Signal(0)) == nil {
		t.Fatalf("member pid %d alive after Close", pid)
	}
	if err := c.Restart(0); !errors.Is(err, ErrClosed) {
		t.Fatalf("Restart after Close: %v, want ErrClosed", err)
	}
}

func TestOptionsValidated(t *testing.T) {
	dir := t.TempDir()
	for name, opts := range map[string][]Option{
		"heartbeat":  {WithTimers(0, time.Second)},
		"election":   {WithTimers(100*time.Millisecond, 200*time.Millisecond)},
		"txn ops":    {WithMaxTxnOps(0)},
		"quota":      {WithQuotaBytes(-1)},
		"timeout":    {WithStartTimeout(0)},
		"nil logger": {WithLogger(nil)},
	} {
		if _, err := Start(dir, 1, append(opts, WithBinary("/nonexistent"))...); err == nil {
			t.Errorf("%s: Start accepted an invalid option", name)
		}
	}
	if _, err := Start(dir, 0, WithBinary("/nonexistent")); err == nil {
		t.Error("Start accepted 0 members")
	}
	if _, err := Start(dir, 1, WithBinary("/nonexistent")); err == nil {
		t.Error("Start with a missing binary succeeded")
	}
}

func TestBinary(t *testing.T) {
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(bin); err != nil || st.Mode()&0o111 == 0 {
		t.Fatalf("Binary() = %s: %v", bin, err)
	}
	t.Setenv(EnvBinary, "/nonexistent/etcd")
	if _, err := Binary(); err == nil {
		t.Fatal("Binary accepted a missing $CHANWATCH_ETCD_BIN")
	}
}
