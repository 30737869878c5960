package conformance

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/stretchr/testify/require"
)

// Timing knobs shared by every scenario. They bound waits; a healthy backend
// meets every expectation far sooner, so they only decide how long a broken
// backend takes to fail. They are sized for a loaded machine (make
// test-load: 2 cores, both busy with other work, -race): a liveness wait
// that fails there but not alone tests the machine, not the code. Safety
// checks do not wait, so nothing is relaxed by these.
const (
	// waitTimeout bounds every wait for something the suite expects to
	// happen, without progress (see liveDeadline).
	waitTimeout = 60 * time.Second
	// promptTimeout bounds what the contract says happens "promptly"
	// (returning on a done context, closing a cancelled watch): a hang
	// still fails, a descheduled goroutine does not.
	promptTimeout = 15 * time.Second
	// pollInterval is how often eventually re-checks its condition.
	pollInterval = 5 * time.Millisecond
	// scenarioTimeout bounds a whole scenario's context.
	scenarioTimeout = 2 * time.Minute
)

// scenarioContext returns a context that ends with the scenario (or after
// scenarioTimeout), for calls that are expected to succeed.
func scenarioContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), scenarioTimeout)
	t.Cleanup(cancel)
	return ctx
}

// cleanupContext returns a fresh bounded context for t.Cleanup functions:
// t.Context() is already cancelled when they run.
func cleanupContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), waitTimeout)
}

// eventually polls cond until it returns true, failing t if it has not
// within waitTimeout. Between polls it calls between (may be nil): scenarios
// on a fake clock use it to nudge time forward while they wait for a
// time-driven effect. cond must not call t.FailNow; it reports through its
// result.
func eventually(t testing.TB, between func(), cond func() bool, format string, args ...any) {
	t.Helper()
	d := newLiveDeadline(waitTimeout, 3*waitTimeout)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		if cond() {
			return
		}
		if between != nil {
			between()
		}
		if why := d.expired(time.Now()); why != "" {
			t.Fatalf("%s: %s", why, fmt.Sprintf(format, args...))
		}
		<-tick.C
	}
}

// liveDeadline bounds a liveness wait by progress rather than by one fixed
// span of real time: it expires when the marks passed to progress have not
// changed for stall, or after limit in all (a wait that keeps progressing
// without ever succeeding). A loaded machine slows components down but does
// not stop them, so a wait whose marks (store revision, fake time) keep
// moving is not failed for being slow; one that is truly stuck still fails
// after stall.
type liveDeadline struct {
	stall, limit time.Duration
	start, moved time.Time
	marks        []int64
}

func newLiveDeadline(stall, limit time.Duration) *liveDeadline {
	now := time.Now()
	return &liveDeadline{stall: stall, limit: max(limit, stall), start: now, moved: now}
}

// progress records the current marks (the same number each call); any
// change counts as progress and restarts the stall bound.
func (d *liveDeadline) progress(now time.Time, marks ...int64) {
	if slices.Equal(d.marks, marks) {
		return
	}
	d.marks = append(d.marks[:0], marks...)
	d.moved = now
}

// expired says why the wait is over ("" while it is not).
func (d *liveDeadline) expired(now time.Time) string {
	switch {
	case now.Sub(d.moved) > d.stall:
		return fmt.Sprintf("not within %v without progress (%v in all)", d.stall, now.Sub(d.start).Round(time.Millisecond))
	case now.Sub(d.start) > d.limit:
		return fmt.Sprintf("not within %v, though still progressing", d.limit)
	}
	return ""
}

// advancer is the part of a fake clock the suite drives
// (*clockwork.FakeClock implements it).
type advancer interface {
	Advance(d time.Duration)
}

// isFakeClock reports whether env's clock is one the suite advances itself.
func isFakeClock(env Env) bool {
	_, ok := env.Clock.(advancer)
	return ok
}

// passTime lets d pass on env's clock: it advances a fake clock at once, or
// waits d of real time (cut short, with a failure, if the test ends).
func passTime(t testing.TB, env Env, d time.Duration) {
	t.Helper()
	if fc, ok := env.Clock.(advancer); ok {
		fc.Advance(d)
		return
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-t.Context().Done():
		t.Fatalf("test ended while waiting %v of real time", d)
	}
}

// nudger returns the between-polls hook for eventually that keeps a fake
// clock moving by step per poll (so a backend that arms its timers lazily
// still sees time pass), or nil for a real clock.
func nudger(env Env, step time.Duration) func() {
	fc, ok := env.Clock.(advancer)
	if !ok {
		return nil
	}
	return func() { fc.Advance(step) }
}

// returnsPromptly runs call in a goroutine and fails t if it has not
// returned within promptTimeout: a backend that ignores a done context would
// otherwise hang the suite.
func returnsPromptly(t testing.TB, what string, call func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		call()
	}()
	select {
	case <-done:
	case <-time.After(promptTimeout):
		t.Fatalf("%s did not return within %v", what, promptTimeout)
	}
}

// currentRevision returns the store's current revision as a List of the
// whole root reports it.
func currentRevision(t testing.TB, ctx context.Context, b kv.KV) int64 {
	t.Helper()
	_, rev, err := b.List(ctx, "")
	require.NoError(t, err, "List(\"\") for the current revision")
	return rev
}

// put writes key=value in a one-op Txn and returns its revision.
func put(t testing.TB, ctx context.Context, b kv.KV, key, value string) int64 {
	t.Helper()
	rev, err := kv.Put(ctx, b, key, []byte(value))
	require.NoError(t, err, "put %q", key)
	return rev
}

// get reads key, which must exist.
func get(t testing.TB, ctx context.Context, b kv.KV, key string) kv.KeyValue {
	t.Helper()
	item, _, err := b.Get(ctx, key)
	require.NoError(t, err, "get %q", key)
	return item
}

// requireMissing checks that key does not exist.
func requireMissing(t testing.TB, ctx context.Context, b kv.KV, key string) {
	t.Helper()
	_, _, err := b.Get(ctx, key)
	require.ErrorIs(t, err, kv.ErrKeyNotFound, "get %q", key)
}

// txn runs t, which must not fail.
func txn(t testing.TB, ctx context.Context, b kv.KV, tx kv.Txn) kv.TxnResponse {
	t.Helper()
	resp, err := b.Txn(ctx, tx)
	require.NoError(t, err, "txn")
	return resp
}

// keysOf returns the keys of items, in order.
func keysOf(items []kv.KeyValue) []string {
	keys := make([]string, 0, len(items))
	for _, it := range items {
		keys = append(keys, it.Key)
	}
	return keys
}

// requireSameKV checks two KeyValues field by field (values compared as
// strings, so nil and empty are equal as the contract says).
func requireSameKV(t testing.TB, want, got kv.KeyValue, msgAndArgs ...any) {
	t.Helper()
	require.Equal(t, want.Key, got.Key, msgAndArgs...)
	require.Equal(t, string(want.Value), string(got.Value), msgAndArgs...)
	require.Equal(t, want.CreateRevision, got.CreateRevision, msgAndArgs...)
	require.Equal(t, want.ModRevision, got.ModRevision, msgAndArgs...)
	require.Equal(t, want.Version, got.Version, msgAndArgs...)
	require.Equal(t, want.Lease, got.Lease, msgAndArgs...)
}

// evt is the comparable digest of an event the suite checks sequences with.
type evt struct {
	Type  kv.EventType
	Key   string
	Value string
	Rev   int64
}

func (e evt) String() string {
	return fmt.Sprintf("%v %s=%q @%d", e.Type, e.Key, e.Value, e.Rev)
}

func putEvt(key, value string, rev int64) evt {
	return evt{Type: kv.EventPut, Key: key, Value: value, Rev: rev}
}

func delEvt(key string, rev int64) evt { return evt{Type: kv.EventDelete, Key: key, Rev: rev} }

// digest reduces events to evts.
func digest(events []kv.Event) []evt {
	out := make([]evt, 0, len(events))
	for _, e := range events {
		out = append(out, evt{Type: e.Type, Key: e.KV.Key, Value: string(e.KV.Value), Rev: e.Revision()})
	}
	return out
}

// watchStream reads one watch with deadlines. It is not safe for concurrent
// use; one goroutine (the test's) reads it.
type watchStream struct {
	t       testing.TB
	ch      kv.WatchChan
	cancel  context.CancelFunc
	pending []kv.Event
	closed  bool
}

// startWatch opens a watch on w, cancelled when the test ends or by
// (*watchStream).stop.
func startWatch(t testing.TB, ctx context.Context, w kv.Watcher, prefix string, fromRev int64) *watchStream {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	ch := w.Watch(ctx, prefix, fromRev)
	require.NotNil(t, ch, "Watch returned a nil channel")
	return &watchStream{t: t, ch: ch, cancel: cancel}
}

// response returns the next response that carries events or an error,
// failing the test if the channel closes or nothing comes within
// waitTimeout. Events left over from next are not returned here.
func (s *watchStream) response() kv.WatchResponse {
	s.t.Helper()
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	for {
		select {
		case resp, ok := <-s.ch:
			if !ok {
				s.closed = true
				s.t.Fatalf("watch channel closed while waiting for a response")
			}
			if len(resp.Events) == 0 && resp.Err == nil {
				continue // an empty response carries nothing the contract pins
			}
			return resp
		case <-timer.C:
			s.t.Fatalf("no watch response within %v", waitTimeout)
		}
	}
}

// next returns the next n events, failing on a terminal error, a close or
// a timeout. Events of a response beyond n are kept for the next call.
func (s *watchStream) next(n int) []kv.Event {
	s.t.Helper()
	out := make([]kv.Event, 0, n)
	for len(out) < n {
		if len(s.pending) == 0 {
			resp := s.response()
			require.NoError(s.t, resp.Err, "watch ended after %d of %d expected events", len(out), n)
			s.pending = resp.Events
		}
		k := min(n-len(out), len(s.pending))
		out = append(out, s.pending[:k]...)
		s.pending = s.pending[k:]
	}
	return out
}

// terminal waits for the watch's final error response and then for the
// channel to close. It returns the events delivered before the error and the
// error; it fails the test if the channel closes without an error or nothing
// ends the watch within waitTimeout.
func (s *watchStream) terminal() ([]kv.Event, error) {
	s.t.Helper()
	events := s.pending
	s.pending = nil
	for {
		resp := s.response()
		events = append(events, resp.Events...)
		if resp.Err != nil {
			s.requireClosed(waitTimeout)
			return events, resp.Err
		}
	}
}

// requireClosed waits up to timeout for the channel to close and fails on
// any response with an error before that. It returns the events drained.
func (s *watchStream) requireClosed(timeout time.Duration) []kv.Event {
	s.t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var events []kv.Event
	for !s.closed {
		select {
		case resp, ok := <-s.ch:
			if !ok {
				s.closed = true
				break
			}
			require.NoError(s.t, resp.Err, "unexpected error response before the close")
			events = append(events, resp.Events...)
		case <-timer.C:
			s.t.Fatalf("watch channel not closed within %v", timeout)
		}
	}
	return events
}

// stop cancels the watch's context.
func (s *watchStream) stop() { s.cancel() }

// requireNoMore proves that the watch holds no event beyond those already
// read: it writes a sentinel key under prefix through b and checks that the
// very next event is that write. A duplicate or stray event would come first.
func (s *watchStream) requireNoMore(ctx context.Context, b kv.KV, prefix string) {
	s.t.Helper()
	key := prefix + "~sentinel"
	value := fmt.Sprintf("sentinel-%d", time.Now().UnixNano())
	rev := put(s.t, ctx, b, key, value)
	got := digest(s.next(1))
	require.Equal(s.t, []evt{putEvt(key, value, rev)}, got, "the next event after the expected ones must be the sentinel write")
}
