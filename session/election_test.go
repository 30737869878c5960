package session_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/session"
)

type campaignResult struct {
	l   *session.Leadership
	err error
}

func campaignAsync(ctx context.Context, b kv.Backend, s *session.Session, id string) <-chan campaignResult {
	ch := make(chan campaignResult, 1)
	go func() {
		l, err := session.Campaign(ctx, b, s, meta.CoordSession{ID: id})
		ch <- campaignResult{l, err}
	}()
	return ch
}

func TestCampaignTakeover(t *testing.T) {
	store, clock := newStore(t)
	ctx := testCtx(t)
	ca, cb := store.NewClient(), store.NewClient()
	sa := newSession(t, ca, session.WithTTL(ttl), session.WithClock(clock))
	sb := newSession(t, cb, session.WithTTL(ttl), session.WithClock(clock))

	if _, _, err := session.Leader(ctx, store); !errors.Is(err, session.ErrNoLeader) {
		t.Fatalf("Leader before any campaign: %v, want ErrNoLeader", err)
	}
	la, err := session.Campaign(ctx, ca, sa, meta.CoordSession{ID: "a"})
	if err != nil {
		t.Fatalf("Campaign a: %v", err)
	}
	// Campaigning again on the same session is idempotent.
	la2, err := session.Campaign(ctx, ca, sa, meta.CoordSession{ID: "a"})
	if err != nil || la2.Token() != la.Token() {
		t.Fatalf("second Campaign a = %v, %v; want token %d", la2, err, la.Token())
	}
	if err := la2.Resign(ctx); err != nil { // resigning a duplicate handle deletes the key
		t.Fatal(err)
	}
	la, err = session.Campaign(ctx, ca, sa, meta.CoordSession{ID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	v, token, err := session.Leader(ctx, store)
	if err != nil || v.ID != "a" || token != la.Token() {
		t.Fatalf("Leader = %+v token %d, %v; want a with %d", v, token, err, la.Token())
	}

	resB := campaignAsync(ctx, cb, sb, "b")
	// b waits while a leads. Prove it by letting a write under its guard
	// after b's campaign could have run: a still leads.
	if resp, err := ca.Txn(ctx, kv.Txn{If: []kv.Cmp{la.Guard()}, Then: []kv.Op{kv.OpPut("work", []byte("a"))}}); err != nil || !resp.Succeeded {
		t.Fatalf("leader's guarded write: %v, %v", resp, err)
	}
	select {
	case r := <-resB:
		t.Fatalf("b returned while a leads: %+v", r)
	default:
	}

	// a's session ends (revoke): its key goes, b takes over with a larger token.
	if err := sa.Close(ctx); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, la.Done(), "a's leadership ends with its session")
	var r campaignResult
	select {
	case r = <-resB:
	case <-ctx.Done():
		t.Fatal("b never took over")
	}
	if r.err != nil || r.l.Token() <= la.Token() {
		t.Fatalf("b's campaign = %v, %v; want a token above %d", r.l, r.err, la.Token())
	}
	if closed(r.l.Done()) {
		t.Fatal("b's leadership done at once")
	}
	// A deposed leader's guarded write fails and writes nothing.
	resp, err := ca.Txn(ctx, kv.Txn{If: []kv.Cmp{la.Guard()}, Then: []kv.Op{kv.OpPut("work", []byte("stale"))}})
	if err != nil || resp.Succeeded {
		t.Fatalf("deposed leader's write: %+v, %v; want Succeeded=false", resp, err)
	}
	if got, _, _ := store.Get(ctx, "work"); string(got.Value) != "a" {
		t.Fatalf("work = %q after the deposed write; want a", got.Value)
	}
	if err := r.l.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if !closed(r.l.Done()) {
		t.Fatal("Done open after Resign")
	}
	if _, _, err := session.Leader(ctx, store); !errors.Is(err, session.ErrNoLeader) {
		t.Fatalf("Leader after resign: %v", err)
	}
}

func TestDeposedByExpiry(t *testing.T) {
	store, clock := newStore(t)
	ctx := testCtx(t)
	ca, cb := store.NewClient(), store.NewClient()
	sa := newSession(t, ca, session.WithTTL(ttl), session.WithClock(clock))
	la, err := session.Campaign(ctx, ca, sa, meta.CoordSession{ID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	// Someone else kills a's lease; a's process has not noticed yet.
	if err := store.Revoke(ctx, sa.Lease()); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, la.Done(), "leadership ends when the leader key is deleted")
	sb := newSession(t, cb, session.WithTTL(ttl), session.WithClock(clock))
	lb, err := session.Campaign(ctx, cb, sb, meta.CoordSession{ID: "b"})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ca.Txn(ctx, kv.Txn{If: []kv.Cmp{la.Guard()}, Then: []kv.Op{kv.OpPut("x", []byte("stale")), kv.OpDelete(meta.CoordinatorKey)}})
	if err != nil || resp.Succeeded {
		t.Fatalf("deposed write: %+v, %v", resp, err)
	}
	if _, _, err := store.Get(ctx, "x"); !errors.Is(err, kv.ErrKeyNotFound) {
		t.Fatalf("deposed leader wrote x: %v", err)
	}
	if _, token, _ := session.Leader(ctx, store); token != lb.Token() {
		t.Fatalf("leader token %d, want b's %d", token, lb.Token())
	}
	sb.Abandon()
	waitClosed(t, lb.Done(), "leadership ends with an abandoned session")
}

func TestCampaignReturnsWhenOwnSessionDies(t *testing.T) {
	store, clock := newStore(t)
	ctx := testCtx(t)
	sa := newSession(t, store, session.WithTTL(ttl), session.WithClock(clock))
	sb := newSession(t, store, session.WithTTL(ttl), session.WithClock(clock))
	la, err := session.Campaign(ctx, store, sa, meta.CoordSession{ID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	resB := campaignAsync(ctx, store, sb, "b")
	sb.Abandon()
	select {
	case r := <-resB:
		if !errors.Is(r.err, session.ErrSessionDone) {
			t.Fatalf("Campaign on a dying session: %v, %v; want ErrSessionDone", r.l, r.err)
		}
	case <-ctx.Done():
		t.Fatal("Campaign hangs on a dead session")
	}
	// And it fails at once on a session that is already done.
	if _, err := session.Campaign(ctx, store, sb, meta.CoordSession{ID: "b"}); !errors.Is(err, session.ErrSessionDone) {
		t.Fatalf("Campaign on a done session: %v", err)
	}
	// ctx ends a wait too.
	sc := newSession(t, store, session.WithTTL(ttl), session.WithClock(clock))
	cctx, cancel := context.WithCancel(ctx)
	resC := campaignAsync(cctx, store, sc, "c")
	cancel()
	if r := <-resC; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("Campaign with a cancelled ctx: %v", r.err)
	}
	if err := la.Resign(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestLeadershipSurvivesDroppedWatchAndCompaction(t *testing.T) {
	store, clock := newStore(t)
	ctx := testCtx(t)
	client := store.NewClient()
	s := newSession(t, client, session.WithTTL(ttl), session.WithClock(clock))
	l, err := session.Campaign(ctx, client, s, meta.CoordSession{ID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		client.DropWatches()
		rev, err := kv.Put(ctx, store, "noise", []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		if err := store.Compact(ctx, rev); err != nil {
			t.Fatal(err)
		}
	}
	if closed(l.Done()) {
		t.Fatal("leadership ended on a dropped watch")
	}
	// The watch is back: deleting the key (behind the leader's back) ends it.
	if _, _, err := kv.Delete(ctx, store, meta.CoordinatorKey); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, l.Done(), "leadership ends after the key is deleted")
}

func TestLeaderCorrupt(t *testing.T) {
	store, _ := newStore(t)
	ctx := testCtx(t)
	if _, err := kv.Put(ctx, store, meta.CoordinatorKey, []byte("nope")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := session.Leader(ctx, store); !errors.Is(err, meta.ErrCorruptValue) {
		t.Fatalf("Leader on a corrupt key: %v", err)
	}
}

// TestCorruptLeaderKeyRepairedByHolder: a leader whose key is overwritten
// (garbage, on no lease: it would never expire) rewrites it under its guard
// and keeps leading; readers see it again.
func TestCorruptLeaderKeyRepairedByHolder(t *testing.T) {
	store, clock := newStore(t)
	ctx := testCtx(t)
	sa := newSession(t, store, session.WithTTL(ttl), session.WithClock(clock))
	la, err := session.Campaign(ctx, store, sa, meta.CoordSession{ID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	for _, garbage := range [][]byte{[]byte("garbage"), []byte(`{"v":1,"id":"intruder"}`)} {
		if _, err := kv.Put(ctx, store, meta.CoordinatorKey, garbage); err != nil {
			t.Fatal(err)
		}
		eventually(t, func() bool {
			cur, _, err := store.Get(ctx, meta.CoordinatorKey)
			v, token, lerr := session.Leader(ctx, store)
			return err == nil && cur.Lease == sa.Lease() && lerr == nil && v.ID == "a" && token == la.Token()
		}, 5*time.Second, "the holder repairs its leader key")
	}
	if closed(la.Done()) {
		t.Fatal("the holder lost leadership over a repairable overwrite")
	}
}

// TestCorruptLeaderKeyClearedByStandby: a leader key nobody repairs (no
// live holder: garbage on no lease) is deleted by a candidate one session
// TTL after it saw it, not before, and the candidate leads.
func TestCorruptLeaderKeyClearedByStandby(t *testing.T) {
	for _, garbage := range [][]byte{[]byte("garbage"), []byte(`{"v":1,"id":"ghost"}`)} {
		t.Run(string(garbage), func(t *testing.T) {
			store, clock := newStore(t)
			ctx := testCtx(t)
			if _, err := kv.Put(ctx, store, meta.CoordinatorKey, garbage); err != nil {
				t.Fatal(err)
			}
			sb := newSession(t, store, session.WithTTL(ttl), session.WithClock(clock))
			start := clock.Now()
			res := campaignAsync(ctx, store, sb, "b")
			// Step the clock, letting each keep-alive land before the next step.
			for {
				select {
				case r := <-res:
					if r.err != nil {
						t.Fatal(r.err)
					}
					if waited := clock.Since(start); waited < ttl {
						t.Fatalf("b deleted the corrupt key after %v, before one TTL (%v)", waited, ttl)
					}
					if v, token, err := session.Leader(ctx, store); err != nil || v.ID != "b" || token != r.l.Token() {
						t.Fatalf("Leader = %+v %d %v, want b", v, token, err)
					}
					return
				default:
				}
				if clock.Since(start) > 3*ttl {
					t.Fatal("b never led over a corrupt leader key")
				}
				clock.Advance(ttl / 20)
				eventually(t, func() bool { return sb.FenceDeadline().Sub(clock.Now()) >= ttl*45/100 || closed(sb.Done()) },
					waitFor, "the session's keep-alive lands")
			}
		})
	}
}
