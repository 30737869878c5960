package session_test

import (
	"errors"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/internal/etcdembed"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/etcdkv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/session"
)

// Sessions and the election on a real etcd server, on the real clock.
func TestOnEtcd(t *testing.T) {
	srv := etcdembed.NewForTest(t)
	cli, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	b, err := etcdkv.New(cli, "session-test")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := testCtx(t)

	ttl := srv.MinLeaseTTL()
	opts := []session.Option{session.WithTTL(ttl), session.WithKeepAliveInterval(ttl / 4), session.WithFenceMargin(ttl / 4)}
	sa := newSession(t, b, opts...)
	sb := newSession(t, b, opts...)
	if sa.TTL() < ttl {
		t.Fatalf("TTL %v below the requested %v", sa.TTL(), ttl)
	}
	la, err := session.Campaign(ctx, b, sa, meta.CoordSession{ID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	resB := campaignAsync(ctx, b, sb, "b")

	// Both sessions outlive several TTLs only by renewing; b keeps waiting.
	select {
	case <-sa.Done():
		t.Fatalf("session a ended: %v", sa.Err())
	case <-sb.Done():
		t.Fatalf("session b ended: %v", sb.Err())
	case r := <-resB:
		t.Fatalf("b won while a leads: %+v", r)
	case <-time.After(3 * ttl):
	}
	if err := sa.Close(ctx); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, la.Done(), "a's leadership ends")
	r := <-resB
	if r.err != nil || r.l.Token() <= la.Token() {
		t.Fatalf("b's campaign: %v, %v", r.l, r.err)
	}
	resp, err := b.Txn(ctx, kv.Txn{If: []kv.Cmp{la.Guard()}, Then: []kv.Op{kv.OpPut("stale", nil)}})
	if err != nil || resp.Succeeded {
		t.Fatalf("deposed write on etcd: %+v, %v", resp, err)
	}
	// An eviction (lease revoked by someone else) ends b's session and leadership.
	if err := b.Revoke(ctx, sb.Lease()); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, r.l.Done(), "b's leadership ends when its lease is revoked")
	waitClosed(t, sb.Done(), "b's session sees the revoke")
	if err := sb.Err(); err == nil || !errors.Is(err, session.ErrExpired) {
		t.Fatalf("b's session ended with %v, want ErrExpired", err)
	}
}
