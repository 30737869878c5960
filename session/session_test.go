package session_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/session"
)

const (
	ttl      = 10 * time.Second
	interval = 3 * time.Second
	margin   = 2 * time.Second
)

func newSession(t *testing.T, b kv.Backend, opts ...session.Option) *session.Session {
	t.Helper()
	s, err := session.New(testCtx(t), b, opts...)
	if err != nil {
		t.Fatalf("session.New: %v", err)
	}
	t.Cleanup(s.Abandon)
	return s
}

func TestNewValidatesOptions(t *testing.T) {
	store, _ := newStore(t)
	for name, opts := range map[string][]session.Option{
		"zero TTL":                {session.WithTTL(0)},
		"negative TTL":            {session.WithTTL(-time.Second)},
		"nil clock":               {session.WithClock(nil)},
		"interval >= TTL":         {session.WithTTL(time.Second), session.WithKeepAliveInterval(time.Second)},
		"negative interval":       {session.WithKeepAliveInterval(-time.Second)},
		"margin >= TTL":           {session.WithTTL(time.Second), session.WithFenceMargin(time.Second)},
		"negative margin":         {session.WithFenceMargin(-2 * time.Second)},
		"interval + margin > TTL": {session.WithTTL(10 * time.Second), session.WithKeepAliveInterval(6 * time.Second), session.WithFenceMargin(5 * time.Second)},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := session.New(testCtx(t), store, opts...)
			if !errors.Is(err, session.ErrInvalidConfig) {
				t.Fatalf("New: got %v, want ErrInvalidConfig", err)
			}
		})
	}
	if n := len(store.Store().Leases()); n != 0 {
		t.Fatalf("invalid configs granted %d leases; want none", n)
	}
}

func TestDefaults(t *testing.T) {
	store, clock := newStore(t)
	s := newSession(t, store, session.WithClock(clock))
	if s.TTL() != session.DefaultTTL {
		t.Fatalf("TTL = %v, want %v", s.TTL(), session.DefaultTTL)
	}
	// Default margin is TTL/5.
	if want := clock.Now().Add(session.DefaultTTL * 4 / 5); !s.FenceDeadline().Equal(want) {
		t.Fatalf("FenceDeadline = %v, want %v", s.FenceDeadline(), want)
	}
}

func TestKeepAliveRenews(t *testing.T) {
	store, clock := newStore(t)
	s := newSession(t, store, session.WithTTL(ttl), session.WithKeepAliveInterval(interval),
		session.WithFenceMargin(margin), session.WithClock(clock))
	start := clock.Now()
	if want := start.Add(ttl - margin); !s.FenceDeadline().Equal(want) {
		t.Fatalf("initial FenceDeadline = %v, want %v", s.FenceDeadline(), want)
	}
	// Ten intervals are three TTLs: the lease lives only if every renewal lands.
	for i := 1; i <= 10; i++ {
		clock.Advance(interval)
		want := clock.Now().Add(ttl - margin)
		eventually(t, func() bool { return s.FenceDeadline().Equal(want) }, waitFor, "fence deadline moves with each keep-alive")
	}
	if closed(s.Done()) {
		t.Fatalf("session ended: %v", s.Err())
	}
	left, err := store.TimeToLive(testCtx(t), s.Lease())
	if err != nil || left != ttl {
		t.Fatalf("TimeToLive = %v, %v; want %v (just renewed)", left, err, ttl)
	}
}

func TestKeepAliveRetriesTransientFailure(t *testing.T) {
	store, clock := newStore(t)
	client := store.NewClient()
	s := newSession(t, client, session.WithTTL(ttl), session.WithKeepAliveInterval(interval),
		session.WithFenceMargin(margin), session.WithClock(clock))
	client.FailNext(1, kv.ErrUnavailable)
	clock.Advance(interval) // this keep-alive fails; the retry comes interval/4 later
	first := s.FenceDeadline()
	eventually(t, func() bool {
		if s.FenceDeadline().After(first) {
			return true
		}
		clock.Advance(interval / 8)
		return false
	}, waitFor, "a keep-alive after the failure is acked")
	if got := s.FenceDeadline(); got.After(clock.Now().Add(ttl - margin)) {
		t.Fatalf("deadline %v lies beyond now + TTL − margin", got)
	}
	if closed(s.Done()) {
		t.Fatalf("session ended after one failed keep-alive: %v", s.Err())
	}
}

func TestFenceOnHungBackend(t *testing.T) {
	store, clock := newStore(t)
	client := store.NewClient()
	s := newSession(t, client, session.WithTTL(ttl), session.WithKeepAliveInterval(interval),
		session.WithFenceMargin(margin), session.WithClock(clock))
	deadline := s.FenceDeadline()

	release := client.Hang()
	defer release()
	// The keep-alive sent at +3s hangs; nothing else can end the session
	// before the fence timer fires at the deadline.
	clock.Advance(deadline.Sub(clock.Now()) - time.Millisecond)
	if closed(s.Done()) {
		t.Fatalf("session ended before its fence deadline: %v", s.Err())
	}
	clock.Advance(time.Millisecond)
	waitClosed(t, s.Done(), "Done closes at the fence deadline")
	if !errors.Is(s.Err(), session.ErrFenced) {
		t.Fatalf("Err = %v, want ErrFenced", s.Err())
	}
	if !clock.Now().Equal(deadline) {
		t.Fatalf("fenced at %v, deadline %v", clock.Now(), deadline)
	}
	// The server still holds the lease: the fence came first, by the margin.
	left, err := store.TimeToLive(testCtx(t), s.Lease())
	if err != nil || left != margin {
		t.Fatalf("server TimeToLive at the fence = %v, %v; want %v", left, err, margin)
	}
	clock.Advance(margin)
	if _, err := store.TimeToLive(testCtx(t), s.Lease()); !errors.Is(err, kv.ErrLeaseNotFound) {
		t.Fatalf("lease after TTL: %v, want ErrLeaseNotFound", err)
	}
	// A late acknowledgement cannot revive it.
	release()
	if !errors.Is(s.Err(), session.ErrFenced) {
		t.Fatalf("Err after release = %v, want ErrFenced", s.Err())
	}
}

func TestExpiredWhenRevokedElsewhere(t *testing.T) {
	store, clock := newStore(t)
	s := newSession(t, store.NewClient(), session.WithTTL(ttl), session.WithKeepAliveInterval(interval),
		session.WithFenceMargin(margin), session.WithClock(clock))
	if err := store.Revoke(testCtx(t), s.Lease()); err != nil {
		t.Fatal(err)
	}
	clock.Advance(interval)
	waitClosed(t, s.Done(), "Done closes when the next keep-alive finds no lease")
	if !errors.Is(s.Err(), session.ErrExpired) || !errors.Is(s.Err(), kv.ErrLeaseNotFound) {
		t.Fatalf("Err = %v, want ErrExpired wrapping kv.ErrLeaseNotFound", s.Err())
	}
	if !clock.Now().Before(s.FenceDeadline()) {
		t.Fatal("expiry should be seen before the fence deadline")
	}
}

func TestCloseRevokesAndAbandonDoesNot(t *testing.T) {
	store, clock := newStore(t)
	ctx := testCtx(t)
	opts := []session.Option{session.WithTTL(ttl), session.WithClock(clock)}

	closedS := newSession(t, store, opts...)
	abandoned := newSession(t, store, opts...)
	for _, s := range []*session.Session{closedS, abandoned} {
		if _, err := store.Txn(ctx, kv.Txn{Then: []kv.Op{kv.OpPutLease("k/"+time.Duration(s.Lease()).String(), nil, s.Lease())}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := closedS.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := closedS.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if !closed(closedS.Done()) || !errors.Is(closedS.Err(), session.ErrClosed) {
		t.Fatalf("after Close: done=%v err=%v", closed(closedS.Done()), closedS.Err())
	}
	abandoned.Abandon()
	if !errors.Is(abandoned.Err(), session.ErrClosed) {
		t.Fatalf("after Abandon: err=%v", abandoned.Err())
	}
	kvs, _, _ := store.List(ctx, "k/")
	if len(kvs) != 1 || kvs[0].Lease != abandoned.Lease() {
		t.Fatalf("keys after Close+Abandon = %v; want only the abandoned session's", kvs)
	}
	clock.Advance(ttl)
	if kvs, _, _ := store.List(ctx, "k/"); len(kvs) != 0 {
		t.Fatalf("abandoned lease's key outlived its TTL: %v", kvs)
	}
}

func TestCloseOnHungBackendReturnsCtxError(t *testing.T) {
	store, clock := newStore(t)
	client := store.NewClient()
	s := newSession(t, client, session.WithTTL(ttl), session.WithClock(clock))
	release := client.Hang()
	defer release()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Close(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Close on a hung backend with a done ctx: %v, want context.Canceled", err)
	}
	release()
	// A retry revokes.
	if err := s.Close(testCtx(t)); err != nil {
		t.Fatalf("retried Close: %v", err)
	}
	if _, ok := store.Store().Lease(s.Lease()); ok {
		t.Fatal("lease survived the retried Close")
	}
}

// TestFenceAfterSuspend: a process suspended past its fence deadline wakes
// with its timers (on Go's monotonic clock, which stops during a suspend)
// not yet fired. The session cross-checks a clock that counts through the
// suspend and fences at once, before its next keep-alive; PastDeadline says
// so too.
func TestFenceAfterSuspend(t *testing.T) {
	store, clock := newStore(t)
	var suspended atomic.Int64 // the suspend clock's offset from the fake clock
	base := clock.Now()
	susp := func() time.Duration { return clock.Since(base) + time.Duration(suspended.Load()) }
	s := newSession(t, store, session.WithTTL(ttl), session.WithClock(clock), session.WithSuspendClock(susp))
	if s.PastDeadline(clock.Now()) {
		t.Fatal("past its deadline at once")
	}
	suspended.Store(int64(ttl)) // the system slept for one TTL; no timer noticed
	if !s.PastDeadline(clock.Now()) {
		t.Fatal("PastDeadline ignores the suspend clock")
	}
	waitClosed(t, s.Done(), "the session fences after the suspend without its clock moving")
	if !errors.Is(s.Err(), session.ErrFenced) {
		t.Fatalf("Err = %v, want ErrFenced", s.Err())
	}
}
