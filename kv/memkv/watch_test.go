package memkv

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
)

// A watcher that reads nothing must not hold up writers; later it reads
// every event, in order, each txn's events together.
func TestWatchSlowWatcherCatchesUp(t *testing.T) {
	s := NewStore()
	defer s.Close()
	const n = 10000
	w := s.Watch(t.Context(), "p/", 0)
	other := s.Watch(t.Context(), "q/", 0) // never read at all
	_ = other

	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range n {
			// Two keys per txn, one outside the prefix.
			txn := kv.Txn{Then: []kv.Op{kv.OpPut(fmt.Sprintf("p/%d", i%100), []byte(fmt.Sprint(i))), kv.OpPut("q/x", nil)}}
			if _, err := s.Txn(txn, DefaultMaxTxnOps); err != nil {
				t.Errorf("txn %d: %v", i, err)
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(waitTimeout):
		t.Fatal("writers blocked by a watcher that reads nothing")
	}

	var got int
	for got < n {
		r := recv(t, w)
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		for _, ev := range r.Events {
			if want := int64(got + 2); ev.Revision() != want || string(ev.KV.Value) != fmt.Sprint(got) {
				t.Fatalf("event %d: rev %d value %q, want rev %d", got, ev.Revision(), ev.KV.Value, want)
			}
			got++
		}
	}
	expectQuiet(t, w)
}

func TestWatchTxnEventsTogether(t *testing.T) {
	s := NewStore()
	defer s.Close()
	w := s.Watch(t.Context(), "", 0)
	mustTxn(t, s, kv.Txn{Then: []kv.Op{kv.OpPut("b", []byte("1")), kv.OpPut("a", []byte("2")), kv.OpDelete("none")}})
	mustTxn(t, s, kv.Txn{Then: []kv.Op{kv.OpDelete("b"), kv.OpPut("c", nil)}})
	r := recv(t, w)
	var evs []kv.Event
	evs = append(evs, r.Events...)
	if len(evs) < 2 {
		t.Fatalf("a txn's events were split: %+v", r)
	}
	if len(evs) == 2 {
		r2 := recv(t, w)
		if len(r2.Events) != 2 {
			t.Fatalf("second txn's events split: %+v", r2)
		}
		evs = append(evs, r2.Events...)
	}
	want := []string{"PUT b 2", "PUT a 2", "DELETE b 3", "PUT c 3"}
	for i, ev := range evs {
		if got := fmt.Sprintf("%v %s %d", ev.Type, ev.KV.Key, ev.Revision()); got != want[i] {
			t.Fatalf("event %d = %q, want %q", i, got, want[i])
		}
	}
	// A DELETE carries the key and revision only; a PUT carries everything.
	if d := evs[2].KV; d.Value != nil || d.Version != 0 || d.CreateRevision != 0 {
		t.Fatalf("delete event %+v", d)
	}
	if p := evs[0].KV; p.CreateRevision != 2 || p.Version != 1 || string(p.Value) != "1" {
		t.Fatalf("put event %+v", p)
	}
}

func TestWatchFromRevAndPrefix(t *testing.T) {
	s := NewStore()
	defer s.Close()
	for i := range 5 {
		mustTxn(t, s, kv.Txn{Then: []kv.Op{kv.OpPut(fmt.Sprintf("k%d", i%2), nil)}})
	}
	// Revisions 2..6 wrote k0 k1 k0 k1 k0; from 4 on k1 we see rev 5 only.
	w := s.Watch(t.Context(), "k1", 4)
	if evs := recvEvents(t, w, 1); evs[0].Revision() != 5 {
		t.Fatalf("got %+v", evs)
	}
	// A future fromRev waits for that revision.
	fut := s.Watch(t.Context(), "", 8)
	mustTxn(t, s, kv.Txn{Then: []kv.Op{kv.OpPut("k1", nil)}})
	mustTxn(t, s, kv.Txn{Then: []kv.Op{kv.OpPut("k0", nil)}})
	if evs := recvEvents(t, fut, 1); evs[0].Revision() != 8 {
		t.Fatalf("future watch got %+v", evs)
	}
	if evs := recvEvents(t, w, 1); evs[0].Revision() != 7 {
		t.Fatalf("got %+v", evs)
	}
	if err := recvErr(t, s.Watch(t.Context(), "/bad", 0)); !errors.Is(err, kv.ErrInvalidKey) {
		t.Fatalf("invalid prefix: %v", err)
	}
}

func TestWatchLaggingWatcherCompacted(t *testing.T) {
	s := NewStore()
	defer s.Close()
	w := s.Watch(t.Context(), "", 0)
	for range 2 * maxWatchEvents {
		mustTxn(t, s, kv.Txn{Then: []kv.Op{kv.OpPut("k", nil)}})
	}
	// The watcher may have one response in flight; then it needs history
	// that is gone.
	if err := s.Compact(s.Rev()); err != nil {
		t.Fatal(err)
	}
	for {
		r := recv(t, w)
		if r.Err != nil {
			if kv.CompactRevision(r.Err) != s.Rev() {
				t.Fatalf("err %v, want compacted at %d", r.Err, s.Rev())
			}
			break
		}
	}
	expectClosed(t, w)
}

func TestWatchCancel(t *testing.T) {
	s := NewStore()
	defer s.Close()
	ctx, cancel := context.WithCancel(t.Context())
	w := s.Watch(ctx, "", 0)
	mustTxn(t, s, kv.Txn{Then: []kv.Op{kv.OpPut("k", nil)}})
	cancel()
	// Cancel closes the channel without an error response (an event
	// response may still come first).
	for _, r := range drain(t, w) {
		if r.Err != nil {
			t.Fatalf("error after cancel: %v", r.Err)
		}
	}
}
