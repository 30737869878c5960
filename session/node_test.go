package session_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/session"
)

func TestAllocateNodeIDConcurrent(t *testing.T) {
	store, _ := newStore(t)
	ctx := testCtx(t)
	const workers, each = 8, 5
	ids := make(chan int64, workers*each)
	var wg sync.WaitGroup
	for range workers {
		client := store.NewClient() // one handle per process
		wg.Go(func() {
			for range each {
				id, err := session.AllocateNodeID(ctx, client)
				if err != nil {
					t.Errorf("AllocateNodeID: %v", err)
					return
				}
				ids <- id
			}
		})
	}
	wg.Wait()
	close(ids)
	seen := map[int64]bool{}
	for id := range ids {
		if seen[id] {
			t.Fatalf("ID %d handed out twice", id)
		}
		seen[id] = true
	}
	// No failures, so no gaps: exactly 1..40.
	for id := int64(1); id <= workers*each; id++ {
		if !seen[id] {
			t.Fatalf("ID %d never handed out; got %v", id, seen)
		}
	}
}

// TestAllocateNodeIDRepairsCounter: a counter that is garbage, missing
// or behind the IDs present in the root never hands out an ID that a node
// has used: it is repaired from the highest ID anywhere in the root, and
// an ID whose session key or channel prefix is not empty is skipped.
func TestAllocateNodeIDRepairsCounter(t *testing.T) {
	for _, tc := range []struct {
		name    string
		counter []byte // nil: missing
		keys    []string
		want    int64
	}{
		{"garbage counter, dead node's keys", []byte("seven"), []string{meta.ChannelKey(5, "c1"), meta.NodeSessionKey(3)}, 6},
		{"missing counter, stale Watched keys", nil, []string{meta.ChannelKey(1, "c1"), meta.ChannelKey(2, "c2")}, 3},
		{"negative counter", []byte("-4"), []string{meta.ChannelKey(9, "c1")}, 10},
		{"counter behind a non-empty prefix", []byte("0"), []string{meta.ChannelKey(1, "c1"), meta.ChannelKey(2, "c2")}, 3},
		{"counter behind a session key", []byte("1"), []string{meta.NodeSessionKey(2)}, 3},
		{"missing counter, fresh root", nil, nil, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store, _ := newStore(t)
			ctx := testCtx(t)
			for _, k := range tc.keys {
				if _, err := kv.Put(ctx, store, k, []byte("{}")); err != nil {
					t.Fatal(err)
				}
			}
			if tc.counter != nil {
				if _, err := kv.Put(ctx, store, meta.NodeIDCounterKey, tc.counter); err != nil {
					t.Fatal(err)
				}
			}
			id, err := session.AllocateNodeID(ctx, store)
			if err != nil || id != tc.want {
				t.Fatalf("AllocateNodeID = %d, %v; want %d", id, err, tc.want)
			}
			next, err := session.AllocateNodeID(ctx, store)
			if err != nil || next != tc.want+1 {
				t.Fatalf("second AllocateNodeID = %d, %v; want %d", next, err, tc.want+1)
			}
		})
	}
}

func TestRegisterNode(t *testing.T) {
	store, clock := newStore(t)
	ctx := testCtx(t)
	// A node that lived before: its ID is taken even though its keys are gone.
	if _, err := kv.Put(ctx, store, meta.NodeIDCounterKey, []byte("41")); err != nil {
		t.Fatal(err)
	}
	s := newSession(t, store, session.WithTTL(ttl), session.WithClock(clock))
	n, err := session.RegisterNode(ctx, store, s, meta.NodeSession{ID: 7, Addr: "10.0.0.1:21124", Version: "v2.4", State: meta.NodeStopping})
	if err != nil {
		t.Fatalf("RegisterNode: %v", err)
	}
	if n.ID() != 42 || n.Session() != s {
		t.Fatalf("node ID %d session %p; want 42 on %p", n.ID(), n.Session(), s)
	}
	got, _, err := store.Get(ctx, meta.NodeSessionKey(42))
	if err != nil {
		t.Fatal(err)
	}
	info, err := meta.DecodeNodeSession(got.Key, got.Value)
	if err != nil {
		t.Fatal(err)
	}
	want := meta.NodeSession{ID: 42, Addr: "10.0.0.1:21124", Version: "v2.4", StartTime: clock.Now(), State: meta.NodeServing, TTL: ttl}
	if !info.StartTime.Equal(want.StartTime) {
		t.Fatalf("start time %v, want %v", info.StartTime, want.StartTime)
	}
	info.StartTime = want.StartTime
	if info != want || got.Lease != s.Lease() {
		t.Fatalf("session key = %+v on lease %d; want %+v on %d", info, got.Lease, want, s.Lease())
	}
	if kvs, _, _ := store.List(ctx, meta.NodePrefix(n.ID())); len(kvs) != 0 {
		t.Fatalf("fresh node's prefix holds %v", kvs)
	}
	// A second registration takes a new ID.
	n2, err := session.RegisterNode(ctx, store, s, meta.NodeSession{})
	if err != nil || n2.ID() != 43 {
		t.Fatalf("second RegisterNode = %v, %v; want ID 43", n2, err)
	}
	members, _, err := session.ListNodes(ctx, store)
	if err != nil || len(members) != 2 || members[0].ID != 42 || members[1].ID != 43 || members[0].Lease != s.Lease() {
		t.Fatalf("ListNodes = %+v, %v", members, err)
	}
	// The keys go with the lease.
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if members, _, _ := session.ListNodes(ctx, store); len(members) != 0 {
		t.Fatalf("ListNodes after Close = %+v", members)
	}
}

func TestRegisterNodeOnDeadSession(t *testing.T) {
	store, clock := newStore(t)
	ctx := testCtx(t)
	s := newSession(t, store, session.WithTTL(ttl), session.WithClock(clock))
	// Lease gone on the server, not yet noticed by the session.
	if err := store.Revoke(ctx, s.Lease()); err != nil {
		t.Fatal(err)
	}
	if _, err := session.RegisterNode(ctx, store, s, meta.NodeSession{}); !errors.Is(err, session.ErrSessionDone) {
		t.Fatalf("RegisterNode on a revoked lease: %v, want ErrSessionDone", err)
	}
	s.Abandon()
	if _, err := session.RegisterNode(ctx, store, s, meta.NodeSession{}); !errors.Is(err, session.ErrSessionDone) {
		t.Fatalf("RegisterNode on an abandoned session: %v, want ErrSessionDone", err)
	}
}

func TestDrainAndSetStoppingKeepTheLease(t *testing.T) {
	store, clock := newStore(t)
	ctx := testCtx(t)
	s := newSession(t, store, session.WithTTL(ttl), session.WithClock(clock))
	a, err := session.RegisterNode(ctx, store, s, meta.NodeSession{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := session.RegisterNode(ctx, store, s, meta.NodeSession{})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.SetStopping(ctx); err != nil {
		t.Fatalf("SetStopping: %v", err)
	}
	other := store.NewClient() // any process may drain
	if err := session.Drain(ctx, other, b.ID()); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	for _, id := range []int64{a.ID(), b.ID()} {
		got, _, err := store.Get(ctx, meta.NodeSessionKey(id))
		if err != nil {
			t.Fatal(err)
		}
		info, err := meta.DecodeNodeSession(got.Key, got.Value)
		if err != nil || info.State != meta.NodeStopping || got.Lease != s.Lease() {
			t.Fatalf("node %d after drain: %+v lease %d (%v); want stopping on %d", id, info, got.Lease, err, s.Lease())
		}
	}
	// Idempotent: no write the second time.
	_, before, _ := store.Get(ctx, meta.NodeSessionKey(a.ID()))
	if err := session.Drain(ctx, store, a.ID()); err != nil {
		t.Fatal(err)
	}
	if _, after, _ := store.Get(ctx, meta.NodeSessionKey(a.ID())); after != before {
		t.Fatalf("second drain wrote (revision %d -> %d)", before, after)
	}
	if err := session.Drain(ctx, store, 99); !errors.Is(err, session.ErrNodeNotFound) {
		t.Fatalf("Drain(unknown) = %v, want ErrNodeNotFound", err)
	}
	// The lease is still what removes the key.
	clock.Advance(ttl / 3)
	s.Abandon()
	clock.Advance(ttl)
	if _, _, err := store.Get(ctx, meta.NodeSessionKey(a.ID())); !errors.Is(err, kv.ErrKeyNotFound) {
		t.Fatalf("drained node's key outlived its lease: %v", err)
	}
	if err := a.SetStopping(ctx); !errors.Is(err, session.ErrNodeNotFound) {
		t.Fatalf("SetStopping after expiry = %v, want ErrNodeNotFound", err)
	}
}

func TestListNodesSkipsCorrupt(t *testing.T) {
	store, clock := newStore(t)
	ctx := testCtx(t)
	s := newSession(t, store, session.WithTTL(ttl), session.WithClock(clock))
	n, err := session.RegisterNode(ctx, store, s, meta.NodeSession{})
	if err != nil {
		t.Fatal(err)
	}
	good, _ := meta.EncodeNodeSession(meta.NodeSession{ID: 5, State: meta.NodeServing, TTL: time.Second})
	for k, v := range map[string][]byte{
		meta.NodeSessionPrefix + "x":  good,                // bad key
		meta.NodeSessionPrefix + "6":  good,                // ID disagrees with the key
		meta.NodeSessionPrefix + "7":  []byte("{not json"), // corrupt value
		meta.NodeSessionPrefix + "08": good,                // leading zero
	} {
		if _, err := kv.Put(ctx, store, k, v); err != nil {
			t.Fatal(err)
		}
	}
	members, rev, err := session.ListNodes(ctx, store)
	if err != nil || len(members) != 1 || members[0].ID != n.ID() || rev == 0 {
		t.Fatalf("ListNodes = %+v at %d, %v; want only node %d", members, rev, err, n.ID())
	}
}

// TestNodeFencedBySessionKey: a registered node's session ends at once
// (ErrEvicted) when its session key is deleted, marked evicted or moved off
// its lease, while the lease itself may still be alive; a drain does not.
func TestNodeFencedBySessionKey(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fence bool
		do    func(ctx context.Context, b kv.KV, n *session.Node) error
	}{
		{"deleted", true, func(ctx context.Context, b kv.KV, n *session.Node) error {
			_, _, err := kv.Delete(ctx, b, meta.NodeSessionKey(n.ID()))
			return err
		}},
		{"marked evicted", true, func(ctx context.Context, b kv.KV, n *session.Node) error {
			v, _ := meta.EncodeNodeSession(meta.NodeSession{ID: n.ID(), State: meta.NodeEvicted, EvictedBy: 7, EvictReason: "test"})
			_, err := b.Txn(ctx, kv.Txn{Then: []kv.Op{kv.OpPutLease(meta.NodeSessionKey(n.ID()), v, n.Session().Lease())}})
			return err
		}},
		{"moved off its lease", true, func(ctx context.Context, b kv.KV, n *session.Node) error {
			v, _ := meta.EncodeNodeSession(meta.NodeSession{ID: n.ID(), State: meta.NodeServing})
			_, err := kv.Put(ctx, b, meta.NodeSessionKey(n.ID()), v)
			return err
		}},
		{"drained", false, func(ctx context.Context, b kv.KV, n *session.Node) error {
			return session.Drain(ctx, b, n.ID())
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store, clock := newStore(t)
			ctx := testCtx(t)
			s := newSession(t, store, session.WithTTL(ttl), session.WithClock(clock))
			n, err := session.RegisterNode(ctx, store, s, meta.NodeSession{})
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.do(ctx, store, n); err != nil {
				t.Fatal(err)
			}
			if !tc.fence {
				// A later write the monitor must see after the drain's.
				if _, _, err := kv.Delete(ctx, store, meta.NodeSessionKey(n.ID())); err != nil {
					t.Fatal(err)
				}
			}
			waitClosed(t, s.Done(), "the session fences when its key goes")
			if !errors.Is(s.Err(), session.ErrEvicted) {
				t.Fatalf("Err = %v, want ErrEvicted", s.Err())
			}
			if !tc.fence && !strings.Contains(s.Err().Error(), "deleted") {
				t.Fatalf("fenced by the drain, not the delete: %v", s.Err())
			}
		})
	}
}
