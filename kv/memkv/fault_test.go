package memkv

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
)

func TestFailNext(t *testing.T) {
	m := newKV(t)
	ctx := t.Context()
	boom := errors.New("boom")
	m.FailNext(2, boom)
	if _, err := kv.Put(ctx, m, "k", nil); !errors.Is(err, boom) {
		t.Fatalf("first call: %v", err)
	}
	if err := recvErr(t, m.Watch(ctx, "", 0)); !errors.Is(err, boom) {
		t.Fatalf("watch: %v", err)
	}
	if _, _, err := m.Get(ctx, "k"); !errors.Is(err, kv.ErrKeyNotFound) {
		t.Fatalf("third call (failed put must not apply): %v", err)
	}
	// Per handle: another client is unaffected; nil means unavailable.
	c := m.NewClient()
	defer c.Close()
	m.FailNext(1, nil)
	if _, err := c.Grant(ctx, time.Second); err != nil {
		t.Fatalf("other handle: %v", err)
	}
	if _, err := m.Grant(ctx, time.Second); !errors.Is(err, kv.ErrUnavailable) {
		t.Fatalf("nil error: %v", err)
	}
	m.FailNext(5, boom)
	m.FailNext(0, nil)
	if _, _, err := m.List(ctx, ""); err != nil {
		t.Fatalf("after FailNext(0): %v", err)
	}
}

// FailNextTxn fails Txns only: reads, watches and lease calls of the same
// handle go through, and the failed Txn is not applied.
func TestFailNextTxn(t *testing.T) {
	m := newKV(t)
	ctx := t.Context()
	m.FailNextTxn(1, kv.ErrUnknownOutcome)
	if _, _, err := m.List(ctx, ""); err != nil {
		t.Fatalf("List: %v", err)
	}
	if _, err := m.Grant(ctx, time.Second); err != nil {
		t.Fatalf("Grant: %v", err)
	}
	wch := m.Watch(ctx, "", 0)
	if _, err := kv.Put(ctx, m, "k", nil); !errors.Is(err, kv.ErrUnknownOutcome) {
		t.Fatalf("Txn: %v, want the injected ErrUnknownOutcome", err)
	}
	if _, _, err := m.Get(ctx, "k"); !errors.Is(err, kv.ErrKeyNotFound) {
		t.Fatalf("the failed Txn was applied: %v", err)
	}
	if _, err := kv.Put(ctx, m, "k", nil); err != nil {
		t.Fatalf("second Txn: %v", err)
	}
	select {
	case r := <-wch:
		if r.Err != nil || len(r.Events) != 1 {
			t.Fatalf("watch: %+v, want the second put alone", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch delivered nothing")
	}
}

func TestHang(t *testing.T) {
	m := newKV(t)
	ctx := t.Context()
	w := m.Watch(ctx, "", 0)
	release := m.Hang()

	// A hung Txn whose context ends is not applied and its outcome is
	// reported unknown.
	tctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	_, err := kv.Put(tctx, m, "lost", nil)
	if !errors.Is(err, kv.ErrUnknownOutcome) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hung txn: %v", err)
	}
	gctx, gcancel := context.WithCancel(ctx)
	gerr := make(chan error, 1)
	go func() {
		_, _, err := m.Get(gctx, "lost")
		gerr <- err
	}()
	gcancel()
	select {
	case err := <-gerr:
		if !errors.Is(err, context.Canceled) || errors.Is(err, kv.ErrUnknownOutcome) {
			t.Fatalf("hung get: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("hung get ignored its context")
	}

	// Another handle is not hung; a blocked call proceeds on release.
	c := m.NewClient()
	defer c.Close()
	put(t, c, "other", "1")
	hw := m.Watch(ctx, "", 0)
	done := make(chan error, 1)
	go func() {
		_, err := kv.Put(ctx, m, "late", nil)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("put returned while hung: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	expectQuiet(t, hw)
	release()
	release()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("released put: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("put still blocked after release")
	}
	// The old watch never saw "lost": it has rev 2 (other) then 3 (late).
	evs := recvEvents(t, w, 2)
	if evs[0].KV.Key != "other" || evs[1].KV.Key != "late" {
		t.Fatalf("events %+v", evs)
	}
	// The watch started while hung delivers after release, from its start.
	if evs := recvEvents(t, hw, 1); evs[0].KV.Key != "late" {
		t.Fatalf("hung watch events %+v", evs)
	}
}

func TestHangThenClose(t *testing.T) {
	m := New()
	defer m.Close()
	c := m.NewClient()
	c.Hang()
	w := c.Watch(t.Context(), "", 0)
	done := make(chan error, 1)
	go func() {
		_, _, err := c.Get(context.Background(), "k")
		done <- err
	}()
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, kv.ErrClosed) {
			t.Fatalf("hung get after close: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("close did not end a hung call")
	}
	if err := recvErr(t, w); !errors.Is(err, kv.ErrClosed) {
		t.Fatalf("hung watch after close: %v", err)
	}
}

func TestDropWatches(t *testing.T) {
	m := newKV(t)
	ctx := t.Context()
	c := m.NewClient()
	defer c.Close()
	w := m.Watch(ctx, "", 0)
	cw := c.Watch(ctx, "", 0)
	rev := put(t, m, "k", "1")
	if evs := recvEvents(t, w, 1); evs[0].Revision() != rev {
		t.Fatalf("got %+v", evs)
	}
	m.DropWatches()
	if err := recvErr(t, w); !errors.Is(err, kv.ErrUnavailable) {
		t.Fatalf("dropped watch: %v", err)
	}
	put(t, m, "k", "2")
	// Resuming from the last revision + 1 misses nothing.
	if evs := recvEvents(t, m.Watch(ctx, "", rev+1), 1); evs[0].Revision() != rev+1 {
		t.Fatalf("resumed watch got %+v", evs)
	}
	// The other handle's watch is untouched.
	if evs := recvEvents(t, cw, 2); evs[1].Revision() != rev+1 {
		t.Fatalf("other handle's watch got %+v", evs)
	}
}

// Closing a NewClient handle is a process crash: its calls and watches end
// with ErrClosed; the store, other handles and the leases live on.
func TestNewClientCloseIsolation(t *testing.T) {
	m := newKV(t)
	ctx := t.Context()
	c := m.NewClient()
	id, err := c.Grant(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Txn(ctx, kv.Txn{Then: []kv.Op{kv.OpPutLease("session", nil, id)}}); err != nil {
		t.Fatal(err)
	}
	cw := c.Watch(ctx, "", 0)
	mw := m.Watch(ctx, "", 0)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if err := recvErr(t, cw); !errors.Is(err, kv.ErrClosed) {
		t.Fatalf("closed handle's watch: %v", err)
	}
	if _, _, err := c.Get(ctx, "session"); !errors.Is(err, kv.ErrClosed) {
		t.Fatalf("closed handle's get: %v", err)
	}
	if err := recvErr(t, c.Watch(ctx, "", 0)); !errors.Is(err, kv.ErrClosed) {
		t.Fatalf("closed handle's new watch: %v", err)
	}
	// The lease outlives its handle; the root can revoke it.
	if _, _, err := m.Get(ctx, "session"); err != nil {
		t.Fatalf("root get: %v", err)
	}
	if err := m.Revoke(ctx, id); err != nil {
		t.Fatal(err)
	}
	if evs := recvEvents(t, mw, 1); evs[0].Type != kv.EventDelete {
		t.Fatalf("root watch got %+v", evs)
	}

	// Closing the root closes the store under every handle.
	d := m.NewClient()
	dw := d.Watch(ctx, "", 0)
	m.Close()
	if err := recvErr(t, mw); !errors.Is(err, kv.ErrClosed) {
		t.Fatalf("root watch after root close: %v", err)
	}
	if err := recvErr(t, dw); !errors.Is(err, kv.ErrClosed) {
		t.Fatalf("client watch after root close: %v", err)
	}
	if _, _, err := d.List(ctx, ""); !errors.Is(err, kv.ErrClosed) {
		t.Fatalf("client list after root close: %v", err)
	}
	if _, err := d.Txn(ctx, kv.Txn{}); !errors.Is(err, kv.ErrClosed) {
		t.Fatalf("client txn after root close: %v", err)
	}
}
