package nodewatch_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/memkv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/nodewatch"
	"github.com/chanwatch/chanwatch/session"
	"github.com/jonboulle/clockwork"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestNewValidates(t *testing.T) {
	store := memkv.New()
	defer store.Close()
	h := newHandler(t)
	for name, tc := range map[string]struct {
		b    kv.Backend
		h    nodewatch.Handler
		opts []nodewatch.Option
	}{
		"nil backend":       {nil, h, nil},
		"nil handler":       {store, nil, nil},
		"zero TTL":          {store, h, []nodewatch.Option{nodewatch.WithSessionTTL(0)}},
		"negative progress": {store, h, []nodewatch.Option{nodewatch.WithProgressInterval(-time.Second)}},
		"nil clock":         {store, h, []nodewatch.Option{nodewatch.WithClock(nil)}},
	} {
		if _, err := nodewatch.New(tc.b, tc.h, tc.opts...); !errors.Is(err, nodewatch.ErrInvalidConfig) {
			t.Errorf("%s: New = %v, want ErrInvalidConfig", name, err)
		}
	}
}

func TestRegistersAndWatches(t *testing.T) {
	e := newEnv(t)
	id := e.start()
	members, _, err := session.ListNodes(e.ctx(), e.store)
	if err != nil || len(members) != 1 || members[0].ID != id || members[0].Addr != "10.0.0.7:21124" || members[0].State != meta.NodeServing {
		t.Fatalf("members = %+v, %v", members, err)
	}
	rev := e.assign(id, "dml_0")
	info, got := e.waitState(id, "dml_0", meta.Watched)
	if info.AssignRevision != rev {
		t.Fatalf("AssignRevision = %d, want the ToWatch revision %d", info.AssignRevision, rev)
	}
	if got.Version != 2 {
		t.Fatalf("key version %d: want exactly one node write", got.Version)
	}
	ws := e.h.watches("dml_0")
	if len(ws) != 1 || ws[0].AssignRevision != rev || string(ws[0].Vchannel) != `{"seek":1}` || ws[0].State != meta.ToWatch {
		t.Fatalf("handler saw %+v; want one Watch with token %d and the Vchannel", ws, rev)
	}
	e.running("dml_0")
	if err := e.node.Run(e.ctx()); !errors.Is(err, nodewatch.ErrAlreadyRun) {
		t.Fatalf("second Run = %v", err)
	}
}

func TestWatchFailure(t *testing.T) {
	e := newEnv(t)
	e.h.watch = func(context.Context, meta.ChannelInfo) error { return errBoom }
	id := e.start()
	rev := e.assign(id, "dml_1")
	info, _ := e.waitState(id, "dml_1", meta.WatchFailure)
	if info.LastError != errBoom.Error() || info.FailedNode != id || info.AssignRevision != rev {
		t.Fatalf("failure report = %+v", info)
	}
	eventually(t, func() bool { return e.h.released("dml_1") == 1 }, waitFor, "Release cleans up after a failed Watch")
	if e.h.ctx("dml_1").Err() == nil {
		t.Fatal("failed Watch's ctx not cancelled")
	}
	e.running()
	// The coordinator releases it before moving it; the node just answers.
	e.toRelease(id, "dml_1")
	e.waitState(id, "dml_1", meta.Released)
	if n := e.h.released("dml_1"); n != 1 {
		t.Fatalf("Release called %d times; want 1 (already released)", n)
	}
}

func TestToRelease(t *testing.T) {
	e := newEnv(t)
	id := e.start()
	e.assign(id, "a")
	e.assign(id, "b")
	e.waitState(id, "a", meta.Watched)
	e.waitState(id, "b", meta.Watched)
	e.running("a", "b")
	watchCtx := e.h.ctx("a")
	e.toRelease(id, "a")
	info, _ := e.waitState(id, "a", meta.Released)
	if watchCtx.Err() == nil {
		t.Fatal("assignment ctx not cancelled on ToRelease")
	}
	if e.h.released("a") != 1 || info.LastError != "" {
		t.Fatalf("releases %d, info %+v", e.h.released("a"), info)
	}
	e.running("b")
	if e.h.ctx("b").Err() != nil {
		t.Fatal("releasing a cancelled b")
	}
	// The coordinator deletes the released key: nothing more happens.
	e.del(id, "a")
	// A ToRelease for a channel this node never ran is simply acked.
	e.put(id, meta.ChannelInfo{Name: "never", State: meta.ToRelease})
	e.waitState(id, "never", meta.Released)
	if n := e.h.released("never"); n != 0 {
		t.Fatalf("Release(never) called %d times", n)
	}
}

func TestReleaseFailure(t *testing.T) {
	e := newEnv(t)
	fail := true
	e.h.release = func(context.Context, string) error {
		if fail {
			return errBoom
		}
		return nil
	}
	id := e.start()
	e.assign(id, "a")
	e.waitState(id, "a", meta.Watched)
	e.toRelease(id, "a")
	info, _ := e.waitState(id, "a", meta.ReleaseFailure)
	if info.LastError != errBoom.Error() {
		t.Fatalf("ReleaseFailure LastError = %q", info.LastError)
	}
	e.running()
	// Asked again, the node retries Release (it must be idempotent).
	e.h.mu.Lock()
	fail = false
	e.h.mu.Unlock()
	e.toRelease(id, "a")
	e.waitState(id, "a", meta.Released)
	if n := e.h.released("a"); n != 2 {
		t.Fatalf("Release called %d times, want 2", n)
	}
}

func TestDeleteWhileRunning(t *testing.T) {
	e := newEnv(t)
	id := e.start()
	e.assign(id, "a")
	e.waitState(id, "a", meta.Watched)
	e.del(id, "a")
	eventually(t, func() bool { return e.h.released("a") == 1 }, waitFor, "deleted channel released")
	e.running()
	if e.h.ctx("a").Err() == nil {
		t.Fatal("ctx not cancelled on delete")
	}
	if _, _, err := e.store.Get(e.ctx(), meta.ChannelKey(id, "a")); !errors.Is(err, kv.ErrKeyNotFound) {
		t.Fatalf("node wrote after the delete: %v", err)
	}
}

func TestDeleteDuringWatchCancelsIt(t *testing.T) {
	e := newEnv(t)
	g := newGate()
	e.h.watch = g.watch
	id := e.start()
	e.assign(id, "a")
	g.waitStarted(t, "a")
	e.del(id, "a")
	eventually(t, func() bool { return e.h.released("a") == 1 }, waitFor, "a released after its key was deleted mid-Watch")
	if _, _, err := e.store.Get(e.ctx(), meta.ChannelKey(id, "a")); !errors.Is(err, kv.ErrKeyNotFound) {
		t.Fatalf("node recreated the key: %v", err)
	}
	e.running()
}

func TestStaleAck(t *testing.T) {
	e := newEnv(t)
	g := newGate()
	e.h.watch = g.watch
	id := e.start()
	first := e.assign(id, "a")
	g.waitStarted(t, "a")
	// The coordinator rewrites the key while Watch runs (a new attempt).
	second := e.assign(id, "a")
	close(g.open)
	info, got := e.waitState(id, "a", meta.Watched)
	if info.AssignRevision != second {
		t.Fatalf("acked token %d, want the rewrite's %d", info.AssignRevision, second)
	}
	// Versions: ToWatch, ToWatch again, the one ack. The stale attempt wrote nothing.
	if got.Version != 3 {
		t.Fatalf("key version %d, want 3 (no write for the stale attempt)", got.Version)
	}
	want := "watch a,release a,watch a"
	if calls := strings.Join(e.h.calls(), ","); calls != want {
		t.Fatalf("calls %q, want %q", calls, want)
	}
	if ws := e.h.watches("a"); ws[0].AssignRevision != first || ws[1].AssignRevision != second {
		t.Fatalf("tokens %d, %d; want %d, %d", ws[0].AssignRevision, ws[1].AssignRevision, first, second)
	}
	e.running("a")
}

func TestProgressHeartbeat(t *testing.T) {
	e := newEnv(t)
	g := newGate()
	e.h.watch = g.progressing(e.clock)
	id := e.start()
	rev := e.assign(id, "slow")
	g.waitStarted(t, "slow")
	advanceUntil := func(cond func() bool, msg string) {
		eventually(t, func() bool {
			if cond() {
				return true
			}
			e.clock.Advance(progressEvery)
			return false
		}, waitFor, "%s", msg)
	}
	var last int64
	advanceUntil(func() bool {
		info, got := e.get(id, "slow")
		last = got.ModRevision
		return info.Progress >= 1 && info.State == meta.ToWatch && got.ModRevision > rev
	}, "a progress heartbeat while Watch runs")
	advanceUntil(func() bool {
		info, got := e.get(id, "slow")
		return info.Progress >= 2 && got.ModRevision > last
	}, "a second heartbeat")
	close(g.open)
	info, _ := e.waitState(id, "slow", meta.Watched)
	if info.AssignRevision != rev || info.Progress < 2 {
		t.Fatalf("ack %+v: want token %d (not a heartbeat's revision) and progress kept", info, rev)
	}
	if n := len(e.h.watches("slow")); n != 1 {
		t.Fatalf("heartbeats re-triggered Watch: %d calls", n)
	}
}

func TestHeartbeatRejectedCancelsWatch(t *testing.T) {
	e := newEnv(t)
	g := newGate()
	e.h.watch = g.progressing(e.clock)
	id := e.start()
	e.assign(id, "a")
	g.waitStarted(t, "a")
	// Someone rewrites the key with a state the node does not act on (an
	// operator tool); the next heartbeat's compare fails, which ends the
	// attempt.
	e.put(id, meta.ChannelInfo{Name: "a", State: meta.Watched})
	eventually(t, func() bool {
		if e.h.released("a") == 1 {
			return true
		}
		e.clock.Advance(progressEvery)
		return false
	}, waitFor, "a heartbeat that fails its compare cancels and releases the attempt")
	if err := e.h.ctx("a").Err(); err == nil {
		t.Fatal("attempt ctx not cancelled")
	}
	e.running()
}

func TestSlowChannelDoesNotBlockAnother(t *testing.T) {
	e := newEnv(t)
	g := newGate()
	e.h.watch = func(ctx context.Context, info meta.ChannelInfo) error {
		if info.Name == "slow" {
			return g.watch(ctx, info)
		}
		return nil
	}
	id := e.start()
	e.assign(id, "slow")
	g.waitStarted(t, "slow")
	e.assign(id, "fast")
	e.waitState(id, "fast", meta.Watched)
	e.toRelease(id, "fast")
	e.waitState(id, "fast", meta.Released)
	if info, _ := e.get(id, "slow"); info.State != meta.ToWatch {
		t.Fatalf("slow is %v", info.State)
	}
	close(g.open)
	e.waitState(id, "slow", meta.Watched)
}

func TestCorruptValuesSkipped(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	e := newEnv(t, nodewatch.WithLogger(zap.New(core)))
	id := e.start()
	ctx := e.ctx()
	for k, v := range map[string]string{
		meta.ChannelKey(id, "junk"):     "{not json",
		meta.ChannelKey(id, "misnamed"): mustEncode(t, meta.ChannelInfo{Name: "other", State: meta.ToWatch}),
		meta.NodePrefix(id) + "a/b":     mustEncode(t, meta.ChannelInfo{Name: "b", State: meta.ToWatch}),
	} {
		if _, err := kv.Put(ctx, e.store, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	e.assign(id, "good")
	e.waitState(id, "good", meta.Watched)
	if got := logs.FilterMessageSnippet("skipping").Len(); got != 3 {
		t.Fatalf("%d skip warnings, want 3: %v", got, logs.All())
	}
	if calls := e.h.calls(); len(calls) != 1 {
		t.Fatalf("handler calls %v; want only good's Watch", calls)
	}
	// A corrupt value over a running channel changes nothing.
	if _, err := kv.Put(ctx, e.store, meta.ChannelKey(id, "good"), []byte("garbage")); err != nil {
		t.Fatal(err)
	}
	e.assign(id, "after")
	e.waitState(id, "after", meta.Watched)
	e.running("after", "good")
}

func mustEncode(t testing.TB, info meta.ChannelInfo) string {
	v, err := meta.EncodeChannelInfo(info)
	if err != nil {
		t.Fatal(err)
	}
	return string(v)
}

func TestDroppedWatchResumes(t *testing.T) {
	e := newEnv(t)
	id := e.start()
	for i, ch := range []string{"a", "b", "c"} {
		e.client.DropWatches()
		e.assign(id, ch)
		if i > 0 {
			// The node answers prev before its release is written: what is
			// tested is that each answer and each release gets through a
			// dropped watch (a release written over a ToWatch the node has
			// not seen yet is released without a Watch, which is right,
			// and made "watched once" below fail under load).
			prev := []string{"a", "b", "c"}[i-1]
			e.waitState(id, prev, meta.Watched)
			e.client.DropWatches()
			e.toRelease(id, prev)
		}
	}
	e.waitState(id, "a", meta.Released)
	e.waitState(id, "b", meta.Released)
	e.waitState(id, "c", meta.Watched)
	for _, ch := range []string{"a", "b", "c"} {
		if n := len(e.h.watches(ch)); n != 1 {
			t.Fatalf("%s watched %d times across dropped watches; want 1", ch, n)
		}
	}
	if e.h.released("a") != 1 || e.h.released("b") != 1 || e.h.released("c") != 0 {
		t.Fatalf("releases a=%d b=%d c=%d", e.h.released("a"), e.h.released("b"), e.h.released("c"))
	}
	e.running("c")
}

func TestCompactionWhileWatchDownRelists(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	e := newEnv(t, nodewatch.WithLogger(zap.New(core)))
	id := e.start()
	e.assign(id, "gone")
	e.assign(id, "stays")
	e.assign(id, "released")
	for _, ch := range []string{"gone", "stays", "released"} {
		e.waitState(id, ch, meta.Watched)
	}
	// Take the node's watch down: new watches wait for the hang to end.
	release := e.client.Hang()
	e.client.DropWatches()
	e.del(id, "gone")
	e.assign(id, "new")
	e.toRelease(id, "released")
	rev := e.assign(id, "noise")
	e.del(id, "noise")
	if err := e.store.Compact(e.ctx(), rev); err != nil {
		t.Fatal(err)
	}
	release()
	e.waitState(id, "new", meta.Watched)
	e.waitState(id, "released", meta.Released)
	eventually(t, func() bool { return e.h.released("gone") == 1 }, waitFor, "vanished key released locally")
	if logs.FilterMessageSnippet("compacted").Len() == 0 {
		t.Fatal("the node never saw the compaction: the test did not take the re-list path")
	}
	if n := len(e.h.watches("noise")); n != 0 {
		t.Fatalf("noise (created and deleted while down) was watched %d times", n)
	}
	if n := len(e.h.watches("stays")); n != 1 {
		t.Fatalf("stays watched %d times; the re-list must not restart it", n)
	}
	e.running("new", "stays")
}

func TestPanickingHandler(t *testing.T) {
	e := newEnv(t)
	e.h.watch = func(_ context.Context, info meta.ChannelInfo) error {
		if info.Name == "bad" {
			panic("kaboom")
		}
		return nil
	}
	e.h.release = func(_ context.Context, ch string) error {
		if ch == "badrelease" {
			panic("kaboom again")
		}
		return nil
	}
	id := e.start()
	e.assign(id, "bad")
	info, _ := e.waitState(id, "bad", meta.WatchFailure)
	if !strings.Contains(info.LastError, "kaboom") || len(info.LastError) > 200 {
		t.Fatalf("LastError = %q", info.LastError)
	}
	e.assign(id, "badrelease")
	e.waitState(id, "badrelease", meta.Watched)
	e.toRelease(id, "badrelease")
	info, _ = e.waitState(id, "badrelease", meta.ReleaseFailure)
	if !strings.Contains(info.LastError, "kaboom again") {
		t.Fatalf("LastError = %q", info.LastError)
	}
	e.assign(id, "fine")
	e.waitState(id, "fine", meta.Watched)
}

func TestSessionLossReleasesThenReregisters(t *testing.T) {
	const ttl = 10 * time.Second // fence margin TTL/5: fenced at +8s
	e := newEnv(t, nodewatch.WithSessionTTL(ttl))
	g := newGate()
	e.h.watch = func(ctx context.Context, info meta.ChannelInfo) error {
		if info.Name == "slow" {
			return g.watch(ctx, info)
		}
		return nil
	}
	id := e.start()
	e.assign(id, "a")
	e.assign(id, "b")
	e.assign(id, "slow")
	e.waitState(id, "a", meta.Watched)
	e.waitState(id, "b", meta.Watched)
	g.waitStarted(t, "slow")
	sessKey, _, err := e.store.Get(e.ctx(), meta.NodeSessionKey(id))
	if err != nil {
		t.Fatal(err)
	}

	release := e.client.Hang() // the node can no longer reach the store
	defer release()
	e.clock.Advance(ttl - ttl/5) // to the fence deadline (no keep-alive was acked)
	for _, ch := range []string{"a", "b", "slow"} {
		eventually(t, func() bool { return e.h.released(ch) == 1 }, waitFor, "%s released on self-fence", ch)
		if e.h.ctx(ch).Err() == nil {
			t.Fatalf("%s ctx not cancelled", ch)
		}
	}
	e.running()
	// Every release happened while the server still holds the lease, so no
	// coordinator can have moved a channel yet.
	if _, ok := e.store.Store().Lease(sessKey.Lease); !ok {
		t.Fatal("lease expired on the server before the node released")
	}
	if e.node.ID() != id {
		t.Fatalf("re-registered (ID %d) while the store is unreachable", e.node.ID())
	}
	// Nothing was written after the fence.
	for _, ch := range []string{"a", "b", "slow"} {
		if info, _ := e.get(id, ch); info.State != map[string]meta.State{"a": meta.Watched, "b": meta.Watched, "slow": meta.ToWatch}[ch] {
			t.Fatalf("%s changed to %v after the fence", ch, info.State)
		}
	}

	release()
	eventually(t, func() bool { return e.node.ID() > id }, waitFor, "node registers under a new ID")
	newID := e.node.ID()
	if _, _, err := e.store.Get(e.ctx(), meta.NodeSessionKey(newID)); err != nil {
		t.Fatalf("new session key: %v", err)
	}
	eventually(t, func() bool {
		_, _, err := e.store.Get(e.ctx(), meta.NodeSessionKey(id))
		return errors.Is(err, kv.ErrKeyNotFound)
	}, waitFor, "old session key revoked")
	// The new incarnation serves its own, empty prefix.
	e.assign(newID, "a")
	e.waitState(newID, "a", meta.Watched)
	e.running("a")
}

func TestSessionExpiredElsewhere(t *testing.T) {
	const ttl = 9 * time.Second
	e := newEnv(t, nodewatch.WithSessionTTL(ttl))
	id := e.start()
	e.assign(id, "a")
	e.waitState(id, "a", meta.Watched)
	sessKey, _, _ := e.store.Get(e.ctx(), meta.NodeSessionKey(id))
	// An eviction: the coordinator revokes the node's lease.
	if err := e.store.Revoke(e.ctx(), sessKey.Lease); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(ttl / 3) // the next keep-alive finds the lease gone
	eventually(t, func() bool { return e.h.released("a") == 1 }, waitFor, "a released after eviction")
	eventually(t, func() bool { return e.node.ID() > id }, waitFor, "re-registered")
}

func TestStopDrains(t *testing.T) {
	e := newEnv(t)
	id := e.start()
	for _, ch := range []string{"a", "b"} {
		e.assign(id, ch)
		e.waitState(id, ch, meta.Watched)
	}
	sessKey, _, _ := e.store.Get(e.ctx(), meta.NodeSessionKey(id))
	stopped := make(chan error, 1)
	go func() { stopped <- e.node.Stop(e.ctx()) }()
	eventually(t, func() bool {
		m, _, _ := session.ListNodes(e.ctx(), e.store)
		return len(m) == 1 && m[0].State == meta.NodeStopping
	}, waitFor, "node marked stopping")
	// The coordinator drains it: ToRelease, wait Released, delete.
	for _, ch := range []string{"a", "b"} {
		select {
		case err := <-stopped:
			t.Fatalf("Stop returned %v before the node was drained", err)
		default:
		}
		e.toRelease(id, ch)
		e.waitState(id, ch, meta.Released)
		e.del(id, ch)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("Stop = %v", err)
		}
	case <-time.After(waitFor):
		t.Fatal("Stop did not return after the drain")
	}
	select {
	case err := <-e.runErr:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
		e.cancel()
		e.cancel = nil
	case <-time.After(waitFor):
		t.Fatal("Run did not return after Stop")
	}
	if _, ok := e.store.Store().Lease(sessKey.Lease); ok {
		t.Fatal("lease not revoked after Stop")
	}
	if e.h.released("a") != 1 || e.h.released("b") != 1 {
		t.Fatal("channels not released exactly once")
	}
}

func TestCancelReleasesAndRevokes(t *testing.T) {
	e := newEnv(t)
	g := newGate()
	e.h.watch = func(ctx context.Context, info meta.ChannelInfo) error {
		if info.Name == "slow" {
			return g.watch(ctx, info)
		}
		return nil
	}
	id := e.start()
	e.assign(id, "a")
	e.waitState(id, "a", meta.Watched)
	e.assign(id, "slow")
	g.waitStarted(t, "slow")
	sessKey, _, _ := e.store.Get(e.ctx(), meta.NodeSessionKey(id))
	e.stop()
	if e.h.released("a") != 1 || e.h.released("slow") != 1 {
		t.Fatalf("releases a=%d slow=%d; want 1 each", e.h.released("a"), e.h.released("slow"))
	}
	if _, ok := e.store.Store().Lease(sessKey.Lease); ok {
		t.Fatal("lease not revoked on cancel")
	}
	if info, _ := e.get(id, "slow"); info.State != meta.ToWatch {
		t.Fatalf("slow acked as %v after cancel", info.State)
	}
	if got := e.node.Running(); len(got) != 0 {
		t.Fatalf("Running after Run returned: %v", got)
	}
}

func TestStopBeforeRun(t *testing.T) {
	store := memkv.New(memkv.WithClock(clockwork.NewFakeClock()))
	defer store.Close()
	n, err := nodewatch.New(store, newHandler(t))
	if err != nil {
		t.Fatal(err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- n.Stop(testCtx(t)) }()
	// Whichever comes first, Run returns nil: Stop either keeps it from
	// registering or drains an empty node.
	if err := n.Run(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("Stop = %v", err)
	}
}

// TestHandlerLearnsNodeAndAssignment: Watch's ctx names the node, and
// Release's ctx carries the assignment it undoes, token included.
func TestHandlerLearnsNodeAndAssignment(t *testing.T) {
	e := newEnv(t)
	type seen struct {
		node int64
		info meta.ChannelInfo
		ok   bool
	}
	got := make(chan seen, 2)
	e.h.watch = func(ctx context.Context, info meta.ChannelInfo) error {
		a, ok := nodewatch.Assignment(ctx)
		got <- seen{nodewatch.NodeID(ctx), a, ok}
		return nil
	}
	e.h.release = func(ctx context.Context, ch string) error {
		a, ok := nodewatch.Assignment(ctx)
		got <- seen{nodewatch.NodeID(ctx), a, ok}
		return nil
	}
	id := e.start()
	rev := e.assign(id, "a")
	w := <-got
	if w.node != id || !w.ok || w.info.AssignRevision != rev || w.info.Name != "a" {
		t.Fatalf("in Watch: node %d, assignment %+v (%v); want node %d, token %d", w.node, w.info, w.ok, id, rev)
	}
	e.waitState(id, "a", meta.Watched)
	e.toRelease(id, "a")
	r := <-got
	if r.node != id || !r.ok || r.info.AssignRevision != rev {
		t.Fatalf("in Release: node %d, assignment %+v (%v); want node %d, token %d", r.node, r.info, r.ok, id, rev)
	}
	if n, _ := nodewatch.Assignment(context.Background()); n.Name != "" || nodewatch.NodeID(context.Background()) != 0 {
		t.Fatal("a foreign ctx carries an assignment")
	}
}

// TestStopFromInsideHandler: a handler that stops its own node with the
// call's ctx does not deadlock: Stop starts the drain and returns, and the
// node drains and Run returns.
func TestStopFromInsideHandler(t *testing.T) {
	e := newEnv(t)
	stopped := make(chan error, 1)
	e.h.watch = func(ctx context.Context, info meta.ChannelInfo) error {
		stopped <- e.node.Stop(ctx)
		return nil
	}
	id := e.start()
	e.assign(id, "a")
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("Stop from the handler: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Stop called from inside Watch did not return")
	}
	e.waitState(id, "a", meta.Watched)
	e.toRelease(id, "a")
	e.waitState(id, "a", meta.Released)
	e.del(id, "a")
	if err := e.node.Stop(e.ctx()); err != nil {
		t.Fatalf("the node did not drain after the handler stopped it: %v", err)
	}
}
