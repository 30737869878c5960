package nodewatch_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv/memkv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/nodewatch"
)

// advanceUntil moves the fake clock in steps until cond holds.
func (e *env) advanceUntil(step time.Duration, cond func() bool, msg string) {
	e.t.Helper()
	eventually(e.t, func() bool {
		if cond() {
			return true
		}
		e.clock.Advance(step)
		return false
	}, waitFor, "%s", msg)
}

// A Watch that never reports progress gets no heartbeat, however long it
// runs: the node's liveness is not the handler's progress. A channel that
// does report on the same clock is the witness that time passed and the
// heartbeat loop ran.
func TestNoProgressNoHeartbeat(t *testing.T) {
	e := newEnv(t)
	quiet, busy := newGate(), newGate()
	e.h.watch = func(ctx context.Context, info meta.ChannelInfo) error {
		if info.Name == "quiet" {
			return quiet.watch(ctx, info)
		}
		return busy.progressing(e.clock)(ctx, info)
	}
	id := e.start()
	e.assign(id, "quiet")
	quiet.waitStarted(t, "quiet")
	e.assign(id, "busy")
	busy.waitStarted(t, "busy")
	e.advanceUntil(time.Second, func() bool {
		info, _ := e.get(id, "busy")
		return info.Progress >= 3
	}, "three heartbeats on the channel that reports progress")
	if info, got := e.get(id, "quiet"); info.Progress != 0 || got.Version != 1 {
		t.Fatalf("quiet: progress %d, version %d; want no heartbeat for a Watch that reports none", info.Progress, got.Version)
	}
	close(quiet.open)
	close(busy.open)
	e.waitState(id, "quiet", meta.Watched)
	e.waitState(id, "busy", meta.Watched)
}

// A chatty handler writes at most one heartbeat per progress interval, and
// every heartbeat follows a report.
func TestProgressRateLimited(t *testing.T) {
	e := newEnv(t)
	g := newGate()
	e.h.watch = g.watch
	id := e.start()
	rev := e.assign(id, "chatty")
	g.waitStarted(t, "chatty")
	ctx := e.h.ctx("chatty")
	start := e.clock.Now()
	var at []time.Time
	for i := 1; i <= 4; i++ {
		for range 1000 {
			nodewatch.ReportProgress(ctx)
		}
		e.advanceUntil(progressEvery/4, func() bool {
			info, _ := e.get(id, "chatty")
			return info.Progress >= int64(i)
		}, "a heartbeat after a burst of reports")
		at = append(at, e.clock.Now())
	}
	// Heartbeat i+1 is written no sooner than i intervals after the first,
	// which is no sooner than start. The test sees each write some time
	// after it is made (it advances the clock while the node's goroutines
	// catch up), never before, so this bound is exact whatever that lag.
	for i, t1 := range at {
		if earliest := start.Add(time.Duration(i) * progressEvery); t1.Before(earliest) {
			t.Fatalf("heartbeat %d came %v after the first report, want >= %d intervals of %v", i+1, t1.Sub(start), i, progressEvery)
		}
	}
	// No report, no heartbeat: the next bump is the ack.
	close(g.open)
	info, got := e.waitState(id, "chatty", meta.Watched)
	if info.Progress != 4 || got.Version != 1+4+1 {
		t.Fatalf("progress %d, version %d; want 4 heartbeats for 4 bursts of 1000 reports, then the ack (version 6)", info.Progress, got.Version)
	}
	if info.AssignRevision != rev {
		t.Fatalf("token %d, want %d", info.AssignRevision, rev)
	}
	// After Watch returned, reports are no-ops.
	for range 10 {
		nodewatch.ReportProgress(ctx)
	}
	busy := newGate()
	e.h.watch = busy.progressing(e.clock)
	e.assign(id, "witness")
	busy.waitStarted(t, "witness")
	e.advanceUntil(time.Second, func() bool {
		info, _ := e.get(id, "witness")
		return info.Progress >= 2
	}, "heartbeats on the witness channel")
	if _, now := e.get(id, "chatty"); now.Version != got.Version {
		t.Fatalf("a report after Watch returned wrote to the key: version %d -> %d", got.Version, now.Version)
	}
	close(busy.open)
	nodewatch.ReportProgress(context.Background()) // not the node's ctx: a no-op
}

// Past WithMaxAttempt a Watch is given up even though it reports progress:
// its ctx is cancelled, it is released, and WatchFailure names the cap.
func TestMaxAttemptCapsWatch(t *testing.T) {
	const capAt = time.Minute
	e := newEnv(t, nodewatch.WithMaxAttempt(capAt))
	g := newGate()
	e.h.watch = g.progressing(e.clock)
	id := e.start()
	e.assign(id, "endless")
	g.waitStarted(t, "endless")
	start := e.clock.Now()
	e.advanceUntil(time.Second, func() bool {
		info, _ := e.get(id, "endless")
		return info.State == meta.WatchFailure
	}, "WatchFailure once the cap passes")
	if ran := e.clock.Now().Sub(start); ran < capAt {
		t.Fatalf("given up after %v, before the cap %v", ran, capAt)
	}
	info, _ := e.get(id, "endless")
	if !strings.Contains(info.LastError, "attempt cap") || !strings.Contains(info.LastError, capAt.String()) {
		t.Fatalf("LastError %q: want it to name the attempt cap %v", info.LastError, capAt)
	}
	if info.Progress < 5 || info.FailedNode != id {
		t.Fatalf("progress %d, failed node %d: want heartbeats up to the cap and FailedNode %d", info.Progress, info.FailedNode, id)
	}
	if !errors.Is(e.h.ctx("endless").Err(), context.Canceled) {
		t.Fatal("Watch's ctx not cancelled at the cap")
	}
	eventually(t, func() bool { return e.h.released("endless") == 1 }, waitFor, "released after the cap")
}

// A long Release (a flush) that reports progress bumps Progress on the
// ToRelease key, so that the coordinator's release timeout is re-armed;
// the answer compares on the last heartbeat's revision.
func TestReleaseReportsProgress(t *testing.T) {
	e := newEnv(t)
	flush := newGate()
	e.h.release = func(ctx context.Context, ch string) error {
		return flush.progressing(e.clock)(ctx, meta.ChannelInfo{Name: ch})
	}
	id := e.start()
	e.assign(id, "flush")
	e.waitState(id, "flush", meta.Watched)
	rel := e.toRelease(id, "flush")
	flush.waitStarted(t, "flush")
	e.advanceUntil(time.Second, func() bool {
		info, got := e.get(id, "flush")
		return info.State == meta.ToRelease && info.Progress >= 2 && got.ModRevision > rel
	}, "progress heartbeats on the ToRelease key")
	close(flush.open)
	info, _ := e.waitState(id, "flush", meta.Released)
	if info.Progress < 2 {
		t.Fatalf("Released with progress %d, want the heartbeats' count kept", info.Progress)
	}
	if n := e.h.released("flush"); n != 1 {
		t.Fatalf("%d Releases, want 1 (our own heartbeats are not new requests)", n)
	}
}

func TestFenceOptionsValidated(t *testing.T) {
	b := memkv.New()
	defer b.Close()
	h := newHandler(t)
	for _, tc := range []struct {
		name string
		opts []nodewatch.Option
		want string // "" = valid
	}{
		{"defaults", nil, ""},
		{"margin and interval", []nodewatch.Option{nodewatch.WithSessionTTL(10 * time.Second),
			nodewatch.WithFenceMargin(5 * time.Second), nodewatch.WithKeepAliveInterval(2 * time.Second)}, ""},
		{"no cap", []nodewatch.Option{nodewatch.WithMaxAttempt(0)}, ""},
		{"negative cap", []nodewatch.Option{nodewatch.WithMaxAttempt(-time.Second)}, "max attempt"},
		{"negative margin", []nodewatch.Option{nodewatch.WithFenceMargin(-time.Second)}, "fence margin"},
		{"margin = TTL", []nodewatch.Option{nodewatch.WithSessionTTL(4 * time.Second), nodewatch.WithFenceMargin(4 * time.Second)}, "fence margin"},
		{"negative interval", []nodewatch.Option{nodewatch.WithKeepAliveInterval(-time.Second)}, "keep-alive interval"},
		{"interval + margin = TTL", []nodewatch.Option{nodewatch.WithSessionTTL(10 * time.Second),
			nodewatch.WithFenceMargin(6 * time.Second), nodewatch.WithKeepAliveInterval(4 * time.Second)}, "interval + fence margin"},
		{"default interval + long margin", []nodewatch.Option{nodewatch.WithSessionTTL(9 * time.Second),
			nodewatch.WithFenceMargin(7 * time.Second)}, "keep-alive interval 3s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := nodewatch.New(b, h, tc.opts...)
			if verr := nodewatch.ValidateOptions(tc.opts...); fmt.Sprint(verr) != fmt.Sprint(err) {
				t.Fatalf("ValidateOptions: %v, New: %v; want the same", verr, err)
			}
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("New: %v, want valid", err)
			case tc.want != "" && (!errors.Is(err, nodewatch.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("New: %v, want ErrInvalidConfig mentioning %q", err, tc.want)
			}
		})
	}
}

// The fence margin reaches the session: with a 10 s margin on a 30 s TTL,
// a node cut off from the store releases its channels 20 s after its last
// acknowledged keep-alive, not 24 s (the TTL/5 default).
func TestFenceMarginReachesSession(t *testing.T) {
	e := newEnv(t, nodewatch.WithSessionTTL(30*time.Second), nodewatch.WithFenceMargin(10*time.Second),
		nodewatch.WithKeepAliveInterval(5*time.Second))
	id := e.start()
	e.assign(id, "a")
	e.waitState(id, "a", meta.Watched)
	release := e.client.Hang() // the node can no longer reach the store
	defer release()
	cut := e.clock.Now()
	e.advanceUntil(500*time.Millisecond, func() bool { return e.h.released("a") == 1 }, "released on self-fence")
	if at := e.clock.Now().Sub(cut); at > 20*time.Second+time.Second || at < 15*time.Second {
		t.Fatalf("fenced %v after the cut, want about TTL − margin = 20s after the last keep-alive (at most 5s before the cut)", at)
	}
}
