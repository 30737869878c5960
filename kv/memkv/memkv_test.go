package memkv

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/jonboulle/clockwork"
)

func TestNewValidatesOptions(t *testing.T) {
	for name, opt := range map[string]Option{
		"nil clock":        WithClock(nil),
		"zero max ops":     WithMaxTxnOps(0),
		"negative retain":  WithAutoCompact(-1),
		"negative max ops": WithMaxTxnOps(-3),
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Fatal("New did not panic")
				}
			}()
			New(opt).Close()
		})
	}
	m := newKV(t, WithMaxTxnOps(2), WithLogger(nil))
	if m.MaxTxnOps() != 2 {
		t.Fatalf("MaxTxnOps = %d", m.MaxTxnOps())
	}
	ops := []kv.Op{kv.OpPut("a", nil), kv.OpPut("b", nil), kv.OpPut("c", nil)}
	if _, err := m.Txn(t.Context(), kv.Txn{Then: ops}); !errors.Is(err, kv.ErrTxnTooLarge) {
		t.Fatalf("3 ops with max 2: %v", err)
	}
}

func TestKVBasics(t *testing.T) {
	m := newKV(t)
	ctx := t.Context()
	w := m.Watch(ctx, "a/", 0)
	rev := put(t, m, "a/1", "x")
	if evs := recvEvents(t, w, 1); evs[0].Revision() != rev || string(evs[0].KV.Value) != "x" {
		t.Fatalf("watch got %+v", evs)
	}
	if kvs, lrev, err := m.List(ctx, "a/"); err != nil || len(kvs) != 1 || lrev != rev {
		t.Fatalf("list: %+v %d %v", kvs, lrev, err)
	}
	if _, _, err := m.List(ctx, "/a"); !errors.Is(err, kv.ErrInvalidKey) {
		t.Fatalf("list invalid prefix: %v", err)
	}
	if _, _, err := m.Get(ctx, "nope"); !errors.Is(err, kv.ErrKeyNotFound) {
		t.Fatalf("get missing: %v", err)
	}
	if err := m.Compact(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if err := m.Compact(ctx, rev+1); !errors.Is(err, kv.ErrFutureRev) {
		t.Fatalf("future compact: %v", err)
	}
	// Values handed out are copies.
	got, _, _ := m.Get(ctx, "a/1")
	got.Value[0] = 'y'
	if again, _, _ := m.Get(ctx, "a/1"); string(again.Value) != "x" {
		t.Fatalf("a caller's write reached the store: %q", again.Value)
	}
	// A done context fails every call at once.
	done, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := kv.Put(done, m, "a/2", nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("put with done ctx: %v", err)
	}
	if _, _, err := m.Get(ctx, "a/2"); !errors.Is(err, kv.ErrKeyNotFound) {
		t.Fatalf("a cancelled put was applied: %v", err)
	}
	if _, err := m.Grant(done, time.Second); !errors.Is(err, context.Canceled) {
		t.Fatalf("grant with done ctx: %v", err)
	}
}

func TestKVAutoCompact(t *testing.T) {
	m := newKV(t, WithAutoCompact(10))
	for range 50 {
		put(t, m, "k", "v")
	}
	s := m.Store()
	if s.Rev() != 51 || s.CompactRev() != 41 {
		t.Fatalf("rev %d compact %d, want 51 and 41", s.Rev(), s.CompactRev())
	}
	if evs := recvEvents(t, m.Watch(t.Context(), "", 42), 10); evs[9].Revision() != 51 {
		t.Fatalf("got %+v", evs)
	}
}

func TestLeaseExpiryFakeClock(t *testing.T) {
	fc := clockwork.NewFakeClock()
	m := newKV(t, WithClock(fc))
	ctx := t.Context()
	if _, err := m.Grant(ctx, 0); !errors.Is(err, kv.ErrInvalidTTL) {
		t.Fatalf("ttl 0: %v", err)
	}
	id, err := m.Grant(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if id == kv.NoLease || id < 1000 {
		t.Fatalf("lease ID %d: want a non-trivial ID", id)
	}
	if _, err := m.Txn(ctx, kv.Txn{Then: []kv.Op{kv.OpPutLease("s/1", nil, id), kv.OpPutLease("s/2", nil, id), kv.OpPut("s/keep", nil)}}); err != nil {
		t.Fatal(err)
	}
	w := m.Watch(ctx, "s/", 0)
	if ttl, err := m.TimeToLive(ctx, id); err != nil || ttl != 10*time.Second {
		t.Fatalf("TimeToLive = %v, %v", ttl, err)
	}
	// The expiry goroutine waits on the clock; Advance alone expires it.
	if err := fc.BlockUntilContext(ctx, 1); err != nil {
		t.Fatal(err)
	}
	fc.Advance(10 * time.Second)
	evs := recvEvents(t, w, 2)
	for i, key := range []string{"s/1", "s/2"} {
		if evs[i].Type != kv.EventDelete || evs[i].KV.Key != key || evs[i].Revision() != 3 {
			t.Fatalf("expiry events %+v", evs)
		}
	}
	if _, err := m.TimeToLive(ctx, id); !errors.Is(err, kv.ErrLeaseNotFound) {
		t.Fatalf("expired lease TimeToLive: %v", err)
	}
	if _, err := m.KeepAliveOnce(ctx, id); !errors.Is(err, kv.ErrLeaseNotFound) {
		t.Fatalf("expired lease KeepAliveOnce: %v", err)
	}
	if _, _, err := m.Get(ctx, "s/keep"); err != nil {
		t.Fatalf("unleased key: %v", err)
	}
}

// After an Advance, the very next call sees the expiry, whatever the
// expiry goroutine is doing.
func TestLeaseExpiryLazy(t *testing.T) {
	fc := clockwork.NewFakeClock()
	m := newKV(t, WithClock(fc))
	ctx := t.Context()
	for range 20 {
		id, err := m.Grant(ctx, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.Txn(ctx, kv.Txn{Then: []kv.Op{kv.OpPutLease("k", nil, id)}}); err != nil {
			t.Fatal(err)
		}
		fc.Advance(time.Second)
		if _, _, err := m.Get(ctx, "k"); !errors.Is(err, kv.ErrKeyNotFound) {
			t.Fatalf("key of an expired lease: %v", err)
		}
	}
}

func TestLeaseKeepAlive(t *testing.T) {
	fc := clockwork.NewFakeClock()
	m := newKV(t, WithClock(fc))
	ctx := t.Context()
	id, err := m.Grant(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	put := kv.Txn{Then: []kv.Op{kv.OpPutLease("k", nil, id)}}
	if _, err := m.Txn(ctx, put); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		fc.Advance(6 * time.Second)
		ttl, err := m.KeepAliveOnce(ctx, id)
		if err != nil || ttl != 10*time.Second {
			t.Fatalf("KeepAliveOnce = %v, %v", ttl, err)
		}
	}
	fc.Advance(6 * time.Second)
	if ttl, err := m.TimeToLive(ctx, id); err != nil || ttl != 4*time.Second {
		t.Fatalf("TimeToLive = %v, %v", ttl, err)
	}
	if _, _, err := m.Get(ctx, "k"); err != nil {
		t.Fatalf("kept-alive key: %v", err)
	}
	fc.Advance(4 * time.Second)
	if _, _, err := m.Get(ctx, "k"); !errors.Is(err, kv.ErrKeyNotFound) {
		t.Fatalf("key after expiry: %v", err)
	}
	if _, err := m.Txn(ctx, put); !errors.Is(err, kv.ErrLeaseNotFound) {
		t.Fatalf("put on expired lease: %v", err)
	}
}

func TestLeaseRevoke(t *testing.T) {
	m := newKV(t)
	ctx := t.Context()
	id, err := m.Grant(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	id2, err := m.Grant(ctx, time.Hour)
	if err != nil || id2 == id {
		t.Fatalf("second lease %d (first %d): %v", id2, id, err)
	}
	if _, err := m.Txn(ctx, kv.Txn{Then: []kv.Op{kv.OpPutLease("k", nil, id)}}); err != nil {
		t.Fatal(err)
	}
	if err := m.Revoke(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Get(ctx, "k"); !errors.Is(err, kv.ErrKeyNotFound) {
		t.Fatalf("key of a revoked lease: %v", err)
	}
	if err := m.Revoke(ctx, id); !errors.Is(err, kv.ErrLeaseNotFound) {
		t.Fatalf("revoke twice: %v", err)
	}
}
