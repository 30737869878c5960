package raftkv

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/chanwatch/chanwatch/kv"
)

// waitTimeout bounds every wait for something a healthy cluster does soon.
const waitTimeout = 20 * time.Second

// testContext ends with the test or after waitTimeout.
func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond every few milliseconds until it holds, failing t
// after waitTimeout.
func eventually(t testing.TB, cond func() bool, what string) {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("not within %v: %s", waitTimeout, what)
		case <-tick.C:
		}
	}
}

// testLogger logs warnings and errors to t until t's cleanups run. Raft's
// connection goroutines may log a closed connection just after the
// transport is closed; those lines are dropped rather than logged after
// the test ended (which panics).
func testLogger(t testing.TB) *zap.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.done = true
	})
	enc := zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig())
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(w), zap.WarnLevel))
}

type testWriter struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

// startCluster starts a cluster under t.TempDir, closed at cleanup.
func startCluster(t testing.TB, n int, opts ...Option) *Cluster {
	t.Helper()
	opts = append([]Option{WithLogger(testLogger(t))}, opts...)
	c, err := StartCluster(t.TempDir(), n, opts...)
	noErr(t, err)
	t.Cleanup(func() { noErr(t, c.Close()) })
	return c
}

// leader waits for a ready leader and returns its index.
func leader(t testing.TB, c *Cluster) int {
	t.Helper()
	i, err := c.WaitLeader(testContext(t))
	noErr(t, err)
	return i
}

// follower returns the index of a running node other than the leader l.
func follower(c *Cluster, l int) int { return (l + 1) % c.Len() }

// nextEvents receives the next watch response, failing t after waitTimeout.
func nextEvents(t testing.TB, wc kv.WatchChan) []kv.Event {
	t.Helper()
	select {
	case r, ok := <-wc:
		if !ok {
			t.Fatal("watch closed")
		}
		noErr(t, r.Err)
		return r.Events
	case <-time.After(waitTimeout):
		t.Fatalf("no watch response within %v", waitTimeout)
		return nil
	}
}

// isAmbiguous reports whether a write error leaves its outcome unknown.
func isAmbiguous(err error) bool {
	return errors.Is(err, kv.ErrUnknownOutcome) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

// noErr fails t at once on a non-nil err.
func noErr(t testing.TB, err error, msgAndArgs ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("unexpected error: %v %s", err, msg(msgAndArgs))
	}
}

// errIs fails t unless errors.Is(err, target).
func errIs(t testing.TB, err, target error, msgAndArgs ...any) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error %v, want %v %s", err, target, msg(msgAndArgs))
	}
}

// equal fails t unless got == want.
func equal[T comparable](t testing.TB, got, want T, msgAndArgs ...any) {
	t.Helper()
	if got != want {
		t.Fatalf("got %v, want %v %s", got, want, msg(msgAndArgs))
	}
}

// check fails t unless ok.
func check(t testing.TB, ok bool, msgAndArgs ...any) {
	t.Helper()
	if !ok {
		t.Fatalf("check failed %s", msg(msgAndArgs))
	}
}

func msg(msgAndArgs []any) string {
	if len(msgAndArgs) == 0 {
		return ""
	}
	if f, ok := msgAndArgs[0].(string); ok {
		return "(" + fmt.Sprintf(f, msgAndArgs[1:]...) + ")"
	}
	return fmt.Sprint(msgAndArgs...)
}
