package session_test

import (
	"errors"
	"testing"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/session"
)

func TestSetCapacity(t *testing.T) {
	store, clock := newStore(t)
	ctx := testCtx(t)
	s := newSession(t, store, session.WithTTL(ttl), session.WithClock(clock))
	labels := meta.MustLabels("zone=a")
	n, err := session.RegisterNode(ctx, store, s, meta.NodeSession{Capacity: 2, Labels: labels})
	if err != nil {
		t.Fatal(err)
	}
	read := func() (meta.NodeSession, kv.KeyValue) {
		t.Helper()
		got, _, err := store.Get(ctx, meta.NodeSessionKey(n.ID()))
		if err != nil {
			t.Fatal(err)
		}
		info, err := meta.DecodeNodeSession(got.Key, got.Value)
		if err != nil {
			t.Fatal(err)
		}
		return info, got
	}
	if info, _ := read(); info.Capacity != 2 || info.Labels != labels {
		t.Fatalf("registered %+v, want capacity 2 and %v", info, labels)
	}
	if err := n.SetStopping(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n.SetCapacity(ctx, 5); err != nil {
		t.Fatal(err)
	}
	info, kvp := read()
	if info.Capacity != 5 || info.State != meta.NodeStopping || info.Labels != labels || kvp.Lease != s.Lease() || kvp.CreateRevision != n.CreateRevision() {
		t.Fatalf("after SetCapacity(5): %+v on lease %d, create revision %d", info, kvp.Lease, kvp.CreateRevision)
	}
	// Unchanged: no write.
	if err := n.SetCapacity(ctx, 5); err != nil {
		t.Fatal(err)
	}
	if _, again := read(); again.ModRevision != kvp.ModRevision {
		t.Fatalf("SetCapacity of the same value wrote (revision %d -> %d)", kvp.ModRevision, again.ModRevision)
	}
	if err := n.SetCapacity(ctx, -5); !errors.Is(err, meta.ErrInvalidPlacement) {
		t.Fatalf("SetCapacity(-5) = %v, want ErrInvalidPlacement", err)
	}
	// Another incarnation's key (a foreign writer recreated it): refused.
	if _, _, err := kv.Delete(ctx, store, meta.NodeSessionKey(n.ID())); err != nil {
		t.Fatal(err)
	}
	if err := n.SetCapacity(ctx, 3); !errors.Is(err, session.ErrNodeNotFound) {
		t.Fatalf("SetCapacity with the key gone = %v, want ErrNodeNotFound", err)
	}
	val, _ := meta.EncodeNodeSession(meta.NodeSession{ID: n.ID(), State: meta.NodeServing})
	if _, err := kv.Put(ctx, store, meta.NodeSessionKey(n.ID()), val); err != nil {
		t.Fatal(err)
	}
	if err := n.SetCapacity(ctx, 3); !errors.Is(err, session.ErrNodeNotFound) {
		t.Fatalf("SetCapacity on another incarnation's key = %v, want ErrNodeNotFound", err)
	}
}
