package conformance

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/memkv"
	"github.com/chanwatch/chanwatch/meta"
)

// These tests show that the MEP suite's own checkers fail when an
// invariant breaks: a checker that cannot fail proves nothing.

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

// checkerOn runs a Checker on a fresh memkv store and returns a handle to
// write with.
func checkerOn(t *testing.T) (*Checker, kv.Backend, *memkv.KV) {
	store := memkv.New(memkv.WithClock(clockwork.NewFakeClock()))
	t.Cleanup(func() { _ = store.Close() })
	rec := NewRecorder(nil, 0)
	chk := NewChecker(store.NewClient(), rec)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- chk.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := chk.Sync(t.Context()); err != nil { // listed before any write
		t.Fatal(err)
	}
	return chk, store.NewClient(), store
}

func mustPut(t *testing.T, b kv.KV, key string, value []byte) {
	t.Helper()
	if _, err := kv.Put(t.Context(), b, key, value); err != nil {
		t.Fatal(err)
	}
}

func encInfo(t *testing.T, ch string, st meta.State) []byte {
	t.Helper()
	v, err := meta.EncodeChannelInfo(meta.ChannelInfo{Name: ch, State: st})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func encSpec(t *testing.T, ch string) []byte {
	t.Helper()
	v, err := meta.EncodeChannelSpec(meta.ChannelSpec{Name: ch})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestCheckerTwoKeys(t *testing.T) {
	chk, b, _ := checkerOn(t)
	mustPut(t, b, meta.RegistryKey("c"), encSpec(t, "c"))
	mustPut(t, b, meta.ChannelKey(1, "c"), encInfo(t, "c", meta.ToWatch))
	// A move in one txn is fine.
	if _, err := b.Txn(t.Context(), kv.Txn{Then: []kv.Op{
		kv.OpDelete(meta.ChannelKey(1, "c")), kv.OpPut(meta.ChannelKey(2, "c"), encInfo(t, "c", meta.ToWatch)),
	}}); err != nil {
		t.Fatal(err)
	}
	if err := chk.Sync(t.Context()); err != nil {
		t.Fatal(err)
	}
	requireNone(t, chk.Violations())
	mustPut(t, b, meta.RemainingKey("c"), encInfo(t, "c", meta.ToWatch))
	if err := chk.Sync(t.Context()); err != nil {
		t.Fatal(err)
	}
	requireViolation(t, chk.Violations(), "invariant 1")
}

func TestCheckerLostChannel(t *testing.T) {
	chk, b, _ := checkerOn(t)
	mustPut(t, b, meta.RegistryKey("c"), encSpec(t, "c"))
	mustPut(t, b, meta.ChannelKey(1, "c"), encInfo(t, "c", meta.Watched))
	// A delete and a put in two txns leaves a revision without a key.
	if _, _, err := kv.Delete(t.Context(), b, meta.ChannelKey(1, "c")); err != nil {
		t.Fatal(err)
	}
	mustPut(t, b, meta.ChannelKey(2, "c"), encInfo(t, "c", meta.ToWatch))
	if err := chk.Sync(t.Context()); err != nil {
		t.Fatal(err)
	}
	requireViolation(t, chk.Violations(), "invariant 3")
}

func TestCheckerDeregisteredIsNotLost(t *testing.T) {
	chk, b, _ := checkerOn(t)
	mustPut(t, b, meta.RegistryKey("c"), encSpec(t, "c"))
	mustPut(t, b, meta.ChannelKey(1, "c"), encInfo(t, "c", meta.Watched))
	if _, _, err := kv.Delete(t.Context(), b, meta.RegistryKey("c")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := kv.Delete(t.Context(), b, meta.ChannelKey(1, "c")); err != nil {
		t.Fatal(err)
	}
	if err := chk.Sync(t.Context()); err != nil {
		t.Fatal(err)
	}
	requireNone(t, chk.Violations())
}

func TestProcKVWriteRules(t *testing.T) {
	chk, b, store := checkerOn(t)
	ctx := t.Context()
	coord := newProcKV(store.NewClient(), "c1", roleCoord, chk)
	// An unguarded coordinator write.
	mustPut(t, coord, meta.ChannelKey(1, "c"), encInfo(t, "c", meta.ToWatch))
	requireViolation(t, chk.Violations(), "without its leadership guard")

	// A guarded write under a leadership the coordinator does not hold.
	mustPut(t, b, meta.CoordinatorKey, mustCoord(t, "c2"))
	item, _, _ := b.Get(ctx, meta.CoordinatorKey)
	if _, err := coord.Txn(ctx, kv.Txn{
		If:   []kv.Cmp{kv.CmpCreateRevision(meta.CoordinatorKey, kv.Equal, item.CreateRevision)},
		Then: []kv.Op{kv.OpPut(meta.ChannelKey(1, "d"), encInfo(t, "d", meta.ToWatch))},
	}); err != nil {
		t.Fatal(err)
	}
	if err := chk.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	requireViolation(t, chk.Violations(), "outside its leadership")

	node := newProcKV(store.NewClient(), "n1", roleNode, chk)
	mustPut(t, node, meta.NodeSessionKey(7), []byte("x"))
	cur, _, _ := b.Get(ctx, meta.ChannelKey(1, "c"))
	// Another node's prefix, even with a CAS.
	if _, err := node.Txn(ctx, kv.Txn{
		If:   []kv.Cmp{kv.CmpModRevision(meta.ChannelKey(1, "c"), kv.Equal, cur.ModRevision)},
		Then: []kv.Op{kv.OpPut(meta.ChannelKey(1, "c"), encInfo(t, "c", meta.Watched))},
	}); err != nil {
		t.Fatal(err)
	}
	requireViolation(t, chk.Violations(), "not under the prefix")
	// Its own prefix without a CAS.
	mustPut(t, node, meta.ChannelKey(7, "e"), encInfo(t, "e", meta.Watched))
	requireViolation(t, chk.Violations(), "without a compare-and-swap")
}

func mustCoord(t *testing.T, id string) []byte {
	v, err := meta.EncodeCoordSession(meta.CoordSession{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestCheckerExpectFence(t *testing.T) {
	chk, b, _ := checkerOn(t)
	ctx := t.Context()
	h := chk.Recorder().Handler("n1", func() int64 { return 3 })
	sess, _ := meta.EncodeNodeSession(meta.NodeSession{ID: 3, State: meta.NodeServing, TTL: time.Second})
	mustPut(t, b, meta.NodeSessionKey(3), sess)
	if err := chk.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	chk.ExpectFence(3)
	_ = h.Watch(ctx, info("c", 4))
	if _, _, err := kv.Delete(ctx, b, meta.NodeSessionKey(3)); err != nil {
		t.Fatal(err)
	}
	if err := chk.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	requireViolation(t, chk.Violations(), "self-fence")
}

func TestMinMoves(t *testing.T) {
	for _, tc := range []struct {
		counts map[int64]int
		want   int
	}{
		{map[int64]int{1: 30, 2: 0}, 15},
		{map[int64]int{1: 15, 2: 15, 3: 0}, 10},
		{map[int64]int{1: 10, 2: 10, 3: 10}, 0},
		{map[int64]int{1: 7, 2: 0, 3: 0}, 4},
		{map[int64]int{1: 3, 2: 3, 3: 1}, 1},
	} {
		if got := minMoves(tc.counts); got != tc.want {
			t.Errorf("minMoves(%v) = %d, want %d", tc.counts, got, tc.want)
		}
	}
}

// Issue 12 (liveness), kind C: a liveness wait extends while its marks
// move (a loaded machine), fails once they stall, and has an overall cap.
func TestLiveDeadlineExtendsWithProgress(t *testing.T) {
	d := newLiveDeadline(10*time.Second, 30*time.Second)
	at := func(s int) time.Time { return d.start.Add(time.Duration(s) * time.Second) }
	d.progress(at(0), 1, 100)
	for s := 5; s <= 20; s += 5 {
		d.progress(at(s), int64(s), 100) // the revision keeps moving
		if why := d.expired(at(s + 9)); why != "" {
			t.Fatalf("expired at %ds while progressing: %s", s+9, why)
		}
	}
	d.progress(at(30), 30, 100)
	if why := d.expired(at(31)); !strings.Contains(why, "still progressing") {
		t.Fatalf("past the cap: %q, want the overall limit", why)
	}

	d = newLiveDeadline(10*time.Second, 30*time.Second)
	d.progress(at(0), 7, 100)
	d.progress(at(8), 7, 100) // the same marks: no progress
	if why := d.expired(at(10)); why != "" {
		t.Fatalf("expired at the stall bound itself: %s", why)
	}
	if why := d.expired(at(11)); !strings.Contains(why, "without progress") {
		t.Fatalf("stalled 11s: %q, want a stall failure", why)
	}
}

func info(ch string, token int64) meta.ChannelInfo {
	return meta.ChannelInfo{Name: ch, State: meta.ToWatch, AssignRevision: token}
}
