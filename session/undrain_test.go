package session_test

import (
	"errors"
	"testing"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/session"
)

func sessionState(t *testing.T, b kv.KV, id int64) (meta.NodeSession, kv.KeyValue) {
	t.Helper()
	got, _, err := b.Get(testCtx(t), meta.NodeSessionKey(id))
	if err != nil {
		t.Fatal(err)
	}
	info, err := meta.DecodeNodeSession(got.Key, got.Value)
	if err != nil {
		t.Fatal(err)
	}
	return info, got
}

func TestUndrain(t *testing.T) {
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
	other := store.NewClient()

	// Serving: nothing to do, nothing written.
	_, before := sessionState(t, store, a.ID())
	if err := session.Undrain(ctx, other, a.ID()); err != nil {
		t.Fatalf("Undrain(serving) = %v", err)
	}
	if _, after := sessionState(t, store, a.ID()); after.ModRevision != before.ModRevision {
		t.Fatalf("Undrain of a serving node wrote (mod revision %d -> %d)", before.ModRevision, after.ModRevision)
	}

	// Drained by an operator: back to serving, on the same lease.
	if err := session.Drain(ctx, other, a.ID()); err != nil {
		t.Fatal(err)
	}
	if info, _ := sessionState(t, store, a.ID()); info.State != meta.NodeStopping || info.StopReason != meta.StopDrain {
		t.Fatalf("after Drain: %+v, want stopping by drain", info)
	}
	if err := session.Undrain(ctx, other, a.ID()); err != nil {
		t.Fatalf("Undrain: %v", err)
	}
	info, kvp := sessionState(t, store, a.ID())
	if info.State != meta.NodeServing || info.StopReason != "" || kvp.Lease != s.Lease() || kvp.CreateRevision != a.CreateRevision() {
		t.Fatalf("after Undrain: %+v lease %d create %d; want serving on lease %d, create %d", info, kvp.Lease, kvp.CreateRevision, s.Lease(), a.CreateRevision())
	}

	// A node shutting down (its own SetStopping) is refused, and an
	// operator's drain after it does not turn it into an undrainable one.
	if err := b.SetStopping(ctx); err != nil {
		t.Fatal(err)
	}
	if err := session.Drain(ctx, other, b.ID()); err != nil {
		t.Fatal(err)
	}
	if err := session.Undrain(ctx, other, b.ID()); !errors.Is(err, session.ErrNodeShuttingDown) {
		t.Fatalf("Undrain(shutting down) = %v, want ErrNodeShuttingDown", err)
	}
	if info, _ := sessionState(t, store, b.ID()); info.State != meta.NodeStopping {
		t.Fatalf("refused Undrain changed the node: %+v", info)
	}

	// Unknown and invalid IDs.
	if err := session.Undrain(ctx, other, 99); !errors.Is(err, session.ErrNodeNotFound) {
		t.Fatalf("Undrain(unknown) = %v, want ErrNodeNotFound", err)
	}
	if err := session.Undrain(ctx, other, 0); !errors.Is(err, meta.ErrInvalidNodeID) {
		t.Fatalf("Undrain(0) = %v, want meta.ErrInvalidNodeID", err)
	}

	// Evicted: neither drain nor undrain rewrites the mark.
	ev := info
	ev.State, ev.EvictedBy, ev.EvictReason = meta.NodeEvicted, 1, "test"
	val, err := meta.EncodeNodeSession(ev)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Txn(ctx, kv.Txn{Then: []kv.Op{kv.OpPutLease(meta.NodeSessionKey(a.ID()), val, s.Lease())}}); err != nil {
		t.Fatal(err)
	}
	if err := session.Undrain(ctx, other, a.ID()); !errors.Is(err, session.ErrNodeEvicted) {
		t.Fatalf("Undrain(evicted) = %v, want ErrNodeEvicted", err)
	}
	if err := session.Drain(ctx, other, a.ID()); !errors.Is(err, session.ErrNodeEvicted) {
		t.Fatalf("Drain(evicted) = %v, want ErrNodeEvicted", err)
	}

	// A lease that ended: the key is gone with it.
	s.Abandon()
	clock.Advance(2 * ttl)
	if err := session.Undrain(ctx, other, b.ID()); !errors.Is(err, session.ErrNodeNotFound) {
		t.Fatalf("Undrain after expiry = %v, want ErrNodeNotFound", err)
	}
}
