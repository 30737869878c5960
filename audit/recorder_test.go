package audit

import (
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/chanwatch/chanwatch/meta"
)

// These tests show that the Recorder fails when an invariant breaks: a
// checker that cannot fail proves nothing.

const waitTimeout, pollInterval = 10 * time.Second, 5 * time.Millisecond

func requireViolation(t *testing.T, got []string, want string) {
	t.Helper()
	for _, v := range got {
		if strings.Contains(v, want) {
			return
		}
	}
	t.Fatalf("no violation containing %q in %q", want, got)
}

func requireNone(t *testing.T, got []string) {
	t.Helper()
	if len(got) > 0 {
		t.Fatalf("unexpected violations: %q", got)
	}
}

func info(ch string, token int64) meta.ChannelInfo {
	return meta.ChannelInfo{Name: ch, State: meta.ToWatch, AssignRevision: token}
}

func TestRecorderOverlap(t *testing.T) {
	ctx := t.Context()
	r := NewRecorder(clockwork.NewFakeClock(), 0)
	a, b := r.Handler("a", nil), r.Handler("b", nil)
	if err := a.Watch(ctx, info("c", 5)); err != nil {
		t.Fatal(err)
	}
	requireNone(t, r.Violations())
	_ = b.Watch(ctx, info("c", 6))
	requireViolation(t, r.Violations(), "overlap")
}

func TestRecorderSequentialOwnersAndTokens(t *testing.T) {
	ctx := t.Context()
	r := NewRecorder(clockwork.NewFakeClock(), 0)
	a, b := r.Handler("a", nil), r.Handler("b", nil)
	_ = a.Watch(ctx, info("c", 5))
	_ = a.Release(ctx, "c")
	_ = b.Watch(ctx, info("c", 9))
	_ = b.Release(ctx, "c")
	requireNone(t, r.Violations())
	_ = a.Watch(ctx, info("c", 7))
	requireViolation(t, r.Violations(), "token went backwards")
	_ = a.Release(ctx, "c")
	_ = b.Watch(ctx, info("c", 9))
	requireViolation(t, r.Violations(), "watched twice")
	_ = b.Release(ctx, "c")
	_ = a.Watch(ctx, info("d", 0))
	requireViolation(t, r.Violations(), "no fencing token")
}

func TestRecorderCrashAndFence(t *testing.T) {
	ctx := t.Context()
	clock := clockwork.NewFakeClock()
	r := NewRecorder(clock, 0)
	a := r.Handler("a", func() int64 { return 1 })
	b := r.Handler("b", func() int64 { return 2 })
	_ = a.Watch(ctx, info("c", 5))
	r.Crash("a")
	if err := a.Watch(ctx, info("x", 6)); err == nil {
		t.Fatal("a crashed process's Watch succeeded")
	}
	_ = b.Watch(ctx, info("c", 7)) // a crashed: no overlap
	requireNone(t, r.Violations())

	// A live node whose session ended must have stopped one TTL later.
	_ = b.Watch(ctx, info("d", 8))
	r.SessionGone(2, 100, 10*time.Second)
	r.CheckFenced()
	requireNone(t, r.Violations())
	clock.Advance(10 * time.Second)
	r.CheckFenced()
	requireViolation(t, r.Violations(), "did not fence")
}

func TestRecorderStuckReleaseWaitsForTTL(t *testing.T) {
	ctx := t.Context()
	clock := clockwork.NewFakeClock()
	r := NewRecorder(clock, 0)
	a := r.Handler("a", func() int64 { return 1 })
	b := r.Handler("b", func() int64 { return 2 })
	unstick := a.StickRelease("c")
	defer unstick()
	_ = a.Watch(ctx, info("c", 5))
	go func() { _ = a.Release(ctx, "c") }()
	waitUntil(t, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		iv := r.open["c"]["a"]
		return iv != nil && iv.Stuck
	})
	r.SessionGone(1, 50, 10*time.Second)
	clock.Advance(9 * time.Second)
	_ = b.Watch(ctx, info("c", 6))
	requireViolation(t, r.Violations(), "overlap") // before one TTL: still a paused owner
	_ = b.Release(ctx, "c")

	r2 := NewRecorder(clock, 0)
	a2, b2 := r2.Handler("a", func() int64 { return 1 }), r2.Handler("b", func() int64 { return 2 })
	unstick2 := a2.StickRelease("c")
	defer unstick2()
	_ = a2.Watch(ctx, info("c", 5))
	go func() { _ = a2.Release(ctx, "c") }()
	waitUntil(t, func() bool {
		r2.mu.Lock()
		defer r2.mu.Unlock()
		iv := r2.open["c"]["a"]
		return iv != nil && iv.Stuck
	})
	r2.SessionGone(1, 50, 10*time.Second)
	clock.Advance(10 * time.Second)
	_ = b2.Watch(ctx, info("c", 6))
	requireNone(t, r2.Violations())
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met")
		}
		timer := time.NewTimer(pollInterval)
		<-timer.C
	}
}
