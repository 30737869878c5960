package channelmgr

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/memkv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/session"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
)

// recorder wraps a coordinator's backend and records, once armed, every
// write it gets applied: successful txns that write, and revokes.
type recorder struct {
	kv.Backend
	mu     sync.Mutex
	armed  bool
	writes []string
}

func (r *recorder) arm(on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.armed = on
}

func (r *recorder) isArmed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.armed
}

func (r *recorder) record(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.writes = append(r.writes, s)
}

func (r *recorder) recorded() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.writes...)
}

func (r *recorder) Txn(ctx context.Context, t kv.Txn) (kv.TxnResponse, error) {
	armed := r.isArmed() // calls started before arming do not count
	resp, err := r.Backend.Txn(ctx, t)
	if err == nil && armed {
		branch := t.Else
		if resp.Succeeded {
			branch = t.Then
		}
		for _, o := range branch {
			if o.IsWrite() {
				r.record(fmt.Sprintf("txn at revision %d: %v %s", resp.Revision, o.Type, o.Key))
			}
		}
	}
	return resp, err
}

func (r *recorder) Revoke(ctx context.Context, id kv.LeaseID) error {
	armed := r.isArmed()
	err := r.Backend.Revoke(ctx, id)
	if err == nil && armed {
		r.record(fmt.Sprintf("revoke %d", id))
	}
	return err
}

// TestDeposedCoordinatorWritesNothing hangs the leader's backend handle
// (its session can no longer renew), lets a standby take over and move the
// channels of a node that died meanwhile, then releases the hang: the
// deposed coordinator must not write anything.
func TestDeposedCoordinatorWritesNothing(t *testing.T) {
	h := newHarness(t)
	ns := h.addNodes(2)
	handle := h.kv.NewClient()
	rec := &recorder{Backend: handle}
	a := h.startCoord(rec, WithID("a"), WithSessionTTL(nodeTTL))
	h.eventually("a leads", func() bool { return a.IsLeader() && a.lastPass.Load() != 0 })
	b := h.startCoord(nil, WithID("b"))
	chs := names("ch", 12)
	h.register(1, chs...)
	h.eventually("all watched", func() bool { return h.allWatched(chs) })

	release := handle.Hang()
	rec.arm(true)
	ns[0].crash() // work for whoever leads: move ns[0]'s channels
	// a cannot renew: its session fences, then its lease (and leader key)
	// expires, and b takes over.
	for i := 0; ; i++ {
		if l, _, err := session.Leader(h.ctx, h.kv); errors.Is(err, session.ErrNoLeader) || l.ID != "a" {
			break
		}
		if i == 30 {
			t.Fatalf("a's leader key did not expire in 30s\n%s", h.dump())
		}
		h.advance(step)
	}
	// On the fake clock a's fence timer and the expiry fire in one jump;
	// what matters is that a stops and writes nothing (checked below).
	h.eventually("a stepped down", func() bool { return !a.IsLeader() })
	h.eventually("b leads", func() bool { return b.IsLeader() && b.lastPass.Load() != 0 })
	h.advance(nodeTTL+step, b)
	h.eventually("b moved the dead node's channels", func() bool { return h.allWatched(chs, ns[1].id) })
	release()
	// Give a every chance to act on its stale view.
	h.advance(5*step, b)
	h.eventually("a campaigns again", func() bool { return a.lastPass.Load() != 0 && !a.IsLeader() })
	if w := rec.recorded(); len(w) != 0 {
		t.Fatalf("the deposed coordinator wrote: %v", w)
	}
	if !b.IsLeader() || !h.allWatched(chs, ns[1].id) {
		t.Fatalf("b lost the lead or channels moved\n%s", h.dump())
	}
	rec.arm(false)
}

// fakeLeader is a Leadership as a deposed coordinator remembers it.
type fakeLeader struct {
	token int64
	done  chan struct{}
}

func (f fakeLeader) Guard() kv.Cmp {
	return kv.CmpCreateRevision(meta.CoordinatorKey, kv.Equal, f.token)
}
func (f fakeLeader) Token() int64          { return f.token }
func (f fakeLeader) Done() <-chan struct{} { return f.done }

// TestStaleGuardIsRejected runs the decision loop with a token that is no
// longer the leader key's: its first write fails the guard, the loop stops
// at once with nothing written, and the rejection is counted.
func TestStaleGuardIsRejected(t *testing.T) {
	h := newHarness(t)
	h.addNode()
	// The current leader's key, created by someone else.
	rev, err := kv.Put(h.ctx, h.kv, meta.CoordinatorKey, []byte(`{"v":1,"id":"new"}`))
	if err != nil {
		t.Fatal(err)
	}
	h.register(1, "x")
	c, err := New(h.kv.NewClient(), h.coordOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(h.ctx, waitFor)
	defer cancel()
	err = c.lead(ctx, fakeLeader{token: rev - 1, done: make(chan struct{})})
	if !errors.Is(err, errLeadershipLost) {
		t.Fatalf("lead = %v, want errLeadershipLost", err)
	}
	if c.IsLeader() {
		t.Fatal("still leader")
	}
	if as := h.assignments(); len(as) != 0 {
		t.Fatalf("stale coordinator wrote %v", as)
	}
	if got := testutil.ToFloat64(c.m.fenced); got != 1 {
		t.Fatalf("fencing rejections = %v", got)
	}
}

// TestTwoThousandChannelsMove moves 2,000 channels off a dead node with
// etcd's default txn limit (128 entries per branch, the guard included).
func TestTwoThousandChannelsMove(t *testing.T) {
	h := newHarness(t, memkv.WithMaxTxnOps(128))
	ns := h.addNodes(2)
	c := h.lead(WithLogger(zap.NewNop())) // 4,000 log lines would dominate the run
	chs := names("ch", 2000)
	h.bulkRegister(chs)
	h.eventually("2000 watched", func() bool { return h.allWatched(chs) })
	onDead := h.counts()[ns[0].id]
	start := h.rev()
	ns[0].crash()
	h.expireAndFence(ns[0].id, c)
	h.eventually("all on the survivor", func() bool { return h.allWatched(chs, ns[1].id) })
	events := h.events(meta.ChannelPrefix, start, h.lastChannelRev())
	revs := moveRevisions(t, events, ns[0].id)
	moved := 0
	for rev, n := range revs {
		moved += n
		// Each move is a delete and a put: <= 63 moves fit 127 ops.
		if 2*n > 127 {
			t.Fatalf("txn at revision %d moved %d channels", rev, n)
		}
	}
	if moved != onDead || onDead < 900 {
		t.Fatalf("moved %d of %d", moved, onDead)
	}
	t.Logf("%d channels moved in %d txns", moved, len(revs))
}

// bulkRegister registers many channels in few txns (as a migration would).
func (h *harness) bulkRegister(chs []string) {
	h.t.Helper()
	for i := 0; i < len(chs); i += 100 {
		var t kv.Txn
		for _, ch := range chs[i:min(i+100, len(chs))] {
			val, err := meta.EncodeChannelSpec(meta.ChannelSpec{Name: ch, CollectionID: int64(len(ch) % 5)})
			if err != nil {
				h.t.Fatal(err)
			}
			t.If = append(t.If, kv.CmpMissing(meta.RegistryKey(ch)))
			t.Then = append(t.Then, kv.OpPut(meta.RegistryKey(ch), val))
		}
		if resp, err := h.kv.Txn(h.ctx, t); err != nil || !resp.Succeeded {
			h.t.Fatalf("bulk register: %v %v", resp.Succeeded, err)
		}
	}
}

// TestCorruptValuesSkippedAndCounted plants keys that do not parse under
// channel/ and registry/: each is logged and counted once, never stops the
// loop, and is repaired only where that is safe.
func TestCorruptValuesSkippedAndCounted(t *testing.T) {
	h := newHarness(t)
	n := h.addNode()
	put := func(key, val string) {
		if _, err := kv.Put(h.ctx, h.kv, key, []byte(val)); err != nil {
			t.Fatal(err)
		}
	}
	h.register(1, "fixme")
	put(meta.RemainingKey("junk"), "{{{")                            // unregistered, remaining: deleted
	put(meta.ChannelKey(7, "gone"), `{"v":9}`)                       // unregistered, dead node: deleted after one TTL
	put(meta.ChannelPrefix+"no-channel-segment", "x")                // foreign key: left alone
	put(meta.ChannelKey(n.id, "fixme"), `{"v":1,"state":"Dancing"}`) // live node: released, then placed
	put(meta.RegistryKey("broken"), "not json")                      // corrupt spec: held
	reg := prometheus.NewRegistry()
	c := h.lead(WithRegisterer(reg))
	h.register(1, "good")
	h.eventually("good and fixme watched", func() bool { return h.allWatched([]string{"good", "fixme"}, n.id) })
	h.eventually("junk deleted", func() bool { _, _, err := h.kv.Get(h.ctx, meta.RemainingKey("junk")); return err != nil })
	h.advance(nodeTTL+step, c)
	h.eventually("gone deleted", func() bool { _, _, err := h.kv.Get(h.ctx, meta.ChannelKey(7, "gone")); return err != nil })
	if _, _, err := h.kv.Get(h.ctx, meta.ChannelPrefix+"no-channel-segment"); err != nil {
		t.Fatalf("foreign key touched: %v", err)
	}
	if _, _, err := Owner(h.ctx, h.kv, "broken"); !errors.Is(err, ErrNotAssigned) {
		t.Fatalf("channel with a corrupt spec placed: %v", err)
	}
	// Counted once each, although the loop has seen them many times.
	if got := testutil.ToFloat64(c.m.corrupt.WithLabelValues("channel")); got != 4 {
		t.Fatalf("corrupt channel keys counted %v times, want 4", got)
	}
	if got := testutil.ToFloat64(c.m.corrupt.WithLabelValues("registry")); got != 1 {
		t.Fatalf("corrupt registry keys counted %v times, want 1", got)
	}
	if n, err := testutil.GatherAndCount(reg, "chanwatch_coordinator_corrupt_keys_total"); err != nil || n != len(corruptPrefixes) { // every prefix exists from start
		t.Fatalf("metric not exported: %d series, %v", n, err)
	}
	// Channels lists the good values and reports nothing corrupt left.
	if infos, err := Channels(h.ctx, h.kv, n.id); err != nil || len(infos) != 2 {
		t.Fatalf("Channels = %v, %v", infos, err)
	}
}

// TestWatchResumeAndCompaction breaks the coordinator's watch, then compacts
// the history it needs: it resumes, then re-lists, and misses nothing.
func TestWatchResumeAndCompaction(t *testing.T) {
	h := newHarness(t)
	n := h.addNode()
	handle := h.kv.NewClient()
	c := h.startCoord(handle)
	h.eventually("leads", func() bool { return c.IsLeader() && c.lastPass.Load() != 0 })

	handle.DropWatches() // resumes from the last revision + 1
	h.register(1, "a")
	h.eventually("a watched after a resume", func() bool { return h.allWatched([]string{"a"}, n.id) })

	release := handle.Hang()
	handle.DropWatches() // the new watch waits behind the hang
	h.register(1, "b")
	if err := h.kv.Compact(h.ctx, h.rev()); err != nil {
		t.Fatal(err)
	}
	release() // the watch starts below the compaction: re-list
	h.eventually("b watched after a re-list", func() bool { return h.allWatched([]string{"a", "b"}, n.id) })
}

// TestUnknownOutcomeResent fails a placement txn with an unknown outcome:
// the batch is resent unchanged and the channel placed once.
func TestUnknownOutcomeResent(t *testing.T) {
	h := newHarness(t)
	n := h.addNode()
	handle := h.kv.NewClient()
	c := h.startCoord(handle)
	h.eventually("leads", func() bool { return c.IsLeader() && c.lastPass.Load() != 0 })
	handle.FailNextTxn(1, kv.ErrUnknownOutcome)
	h.register(1, "x")
	h.eventually("the failed txn", func() bool { return testutil.ToFloat64(c.m.txns.WithLabelValues("error")) == 1 })
	h.advance(step, c) // the next pass resends
	h.eventually("x watched", func() bool { return h.allWatched([]string{"x"}, n.id) })
}

// TestDrainOnlyNodeToRemaining drains the only node: its channels leave it
// (ToRelease, Released) for channel/remaining/, and return when a node joins.
func TestDrainOnlyNodeToRemaining(t *testing.T) {
	h := newHarness(t)
	n := h.addNode()
	h.lead()
	chs := names("ch", 4)
	h.register(1, chs...)
	h.eventually("watched", func() bool { return h.allWatched(chs, n.id) })
	n.setStopping()
	h.eventually("node prefix empty, all remaining", func() bool {
		infos, err := Channels(h.ctx, h.kv, n.id)
		rem, _ := Remaining(h.ctx, h.kv)
		return err == nil && len(infos) == 0 && len(rem) == len(chs)
	})
	m := h.addNode()
	h.eventually("all on the new node", func() bool { return h.allWatched(chs, m.id) })
}

// TestConsistentHashPolicy runs the coordinator with the sticky policy: each
// channel lands on its ring owner.
func TestConsistentHashPolicy(t *testing.T) {
	h := newHarness(t)
	ns := h.addNodes(3)
	p := ConsistentHash(0)
	h.lead(WithPolicy(p))
	chs := names("ch", 30)
	h.register(1, chs...)
	h.eventually("watched", func() bool { return h.allWatched(chs) })
	var req []Channel
	for _, ch := range chs {
		req = append(req, Channel{Name: ch, CollectionID: 1})
	}
	want := p.Place(req, []NodeLoad{{ID: ns[0].id}, {ID: ns[1].id}, {ID: ns[2].id}})
	as := h.assignments()
	for i, ch := range chs {
		if as[ch].node != want[i] {
			t.Fatalf("%s on node %d, ring owner %d", ch, as[ch].node, want[i])
		}
	}
}

// heldTxns is a backend whose Txns, once armed, wait until let() (or their
// context ends) before they go out: a write in flight across a pause.
type heldTxns struct {
	kv.Backend
	mu      sync.Mutex
	armed   bool
	entered chan struct{} // gets one value per held txn
	gate    chan struct{}
}

func (b *heldTxns) arm() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.armed, b.entered, b.gate = true, make(chan struct{}, 16), make(chan struct{})
}

func (b *heldTxns) let() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.armed = false
	close(b.gate)
}

func (b *heldTxns) Txn(ctx context.Context, t kv.Txn) (kv.TxnResponse, error) {
	b.mu.Lock()
	armed, entered, gate := b.armed, b.entered, b.gate
	b.mu.Unlock()
	if armed {
		entered <- struct{}{}
		select {
		case <-gate:
		case <-ctx.Done():
			return kv.TxnResponse{}, fmt.Errorf("%w: held: %w", kv.ErrUnknownOutcome, ctx.Err())
		}
	}
	return b.Backend.Txn(ctx, t)
}

// TestTxnInFlightWhenDeposed: a coordinator's write is in flight when its
// leadership ends and a successor takes over. The write still gets its
// answer (for up to a session TTL): the leader guard rejects it, and the
// rejection is counted and logged rather than lost to a cancel. A write
// that never answers is given up after the TTL.
func TestTxnInFlightWhenDeposed(t *testing.T) {
	for _, answers := range []bool{true, false} {
		t.Run(fmt.Sprintf("answers=%v", answers), func(t *testing.T) {
			h := newHarness(t)
			h.addNode()
			token, err := kv.Put(h.ctx, h.kv, meta.CoordinatorKey, []byte(`{"v":1,"id":"old"}`))
			if err != nil {
				t.Fatal(err)
			}
			b := &heldTxns{Backend: h.kv.NewClient()}
			c, err := New(b, h.coordOptions()...)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			ended := make(chan error, 1)
			go func() { ended <- c.lead(h.ctx, fakeLeader{token: token, done: done}) }()
			h.eventually("leading", c.IsLeader)

			b.arm()
			h.register(1, "x")
			select {
			case <-b.entered:
			case <-time.After(waitFor):
				t.Fatal("no txn for the new channel")
			}
			// A successor takes over while the write is held.
			if _, _, err := kv.Delete(h.ctx, h.kv, meta.CoordinatorKey); err != nil {
				t.Fatal(err)
			}
			if _, err := kv.Put(h.ctx, h.kv, meta.CoordinatorKey, []byte(`{"v":1,"id":"new"}`)); err != nil {
				t.Fatal(err)
			}
			close(done)
			h.eventually("stepped down", func() bool { return !c.IsLeader() })
			if answers {
				b.let()
			}
			var lerr error
			h.eventually("lead returned", func() bool {
				select {
				case lerr = <-ended:
					return true
				default:
				}
				if !answers {
					// The grace runs on the clock (one session TTL) from
					// when the term's context ended.
					h.clk.Advance(coordTTL)
				}
				return false
			})
			if !errors.Is(lerr, errLeadershipLost) {
				t.Fatalf("lead = %v, want errLeadershipLost", lerr)
			}
			want := 0.0
			if answers {
				want = 1
			}
			if got := testutil.ToFloat64(c.m.fenced); got != want {
				t.Fatalf("fencing rejections = %v, want %v", got, want)
			}
			if as := h.assignments(); len(as) != 0 {
				t.Fatalf("deposed coordinator wrote %v", as)
			}
			if !answers {
				b.let()
			}
		})
	}
}

// TestDeposedEvictionWritesNothing: a coordinator whose leadership has
// passed decides to evict a node (its channel says ReleaseFailure). The
// eviction is a guarded write, so it fails: the node's session key is not
// marked, its lease is not revoked, and the loop stops as deposed.
func TestDeposedEvictionWritesNothing(t *testing.T) {
	h := newHarness(t)
	n := h.addNode()
	rev, err := kv.Put(h.ctx, h.kv, meta.CoordinatorKey, []byte(`{"v":1,"id":"new"}`))
	if err != nil {
		t.Fatal(err)
	}
	h.register(1, "x")
	val, _ := meta.EncodeChannelInfo(meta.ChannelInfo{Name: "x", CollectionID: 1, State: meta.ReleaseFailure, LastError: "stuck"})
	if _, err := kv.Put(h.ctx, h.kv, meta.ChannelKey(n.id, "x"), val); err != nil {
		t.Fatal(err)
	}
	before, _, err := h.kv.Get(h.ctx, meta.NodeSessionKey(n.id))
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(h.kv.NewClient(), h.coordOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(h.ctx, waitFor)
	defer cancel()
	if err := c.lead(ctx, fakeLeader{token: rev - 1, done: make(chan struct{})}); !errors.Is(err, errLeadershipLost) {
		t.Fatalf("lead = %v, want errLeadershipLost", err)
	}
	after, _, err := h.kv.Get(h.ctx, meta.NodeSessionKey(n.id))
	if err != nil || after.ModRevision != before.ModRevision {
		t.Fatalf("the deposed coordinator's eviction touched the session key (%d -> %d, %v)", before.ModRevision, after.ModRevision, err)
	}
	if _, err := h.kv.TimeToLive(h.ctx, n.lease); err != nil {
		t.Fatalf("the deposed coordinator revoked the node's lease: %v", err)
	}
	if got := testutil.ToFloat64(c.m.fenced); got != 1 {
		t.Fatalf("fencing rejections = %v, want 1", got)
	}
}
