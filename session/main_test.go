package session_test

import (
	"context"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv/memkv"
	"github.com/jonboulle/clockwork"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitFor bounds every wait in these tests, in real time.
const waitFor = 10 * time.Second

// eventually polls cond until it holds or timeout passes (real time).
func eventually(t testing.TB, cond func() bool, timeout time.Duration, msg string) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for: %s", timeout, msg)
		case <-tick.C:
		}
	}
}

// closed reports whether ch is closed.
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// waitClosed fails the test unless ch closes within waitFor.
func waitClosed(t testing.TB, ch <-chan struct{}, msg string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitFor):
		t.Fatalf("timed out waiting for: %s", msg)
	}
}

// newStore returns a memkv store on a fake clock, closed at cleanup.
func newStore(t testing.TB) (*memkv.KV, *clockwork.FakeClock) {
	t.Helper()
	clock := clockwork.NewFakeClock()
	store := memkv.New(memkv.WithClock(clock))
	t.Cleanup(func() { _ = store.Close() })
	return store, clock
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	t.Cleanup(cancel)
	return ctx
}
