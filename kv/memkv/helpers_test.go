package memkv

import (
	"context"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitTimeout bounds every wait in these tests; nothing here should take
// more than a fraction of it.
const waitTimeout = 10 * time.Second

// recv returns the next response of ch, failing the test if ch is closed or
// nothing arrives in time.
func recv(t *testing.T, ch kv.WatchChan) kv.WatchResponse {
	t.Helper()
	select {
	case r, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed")
		}
		return r
	case <-time.After(waitTimeout):
		t.Fatal("timed out waiting for a watch response")
	}
	panic("unreachable")
}

// recvEvents reads responses until it holds n events; an error response
// fails the test.
func recvEvents(t *testing.T, ch kv.WatchChan, n int) []kv.Event {
	t.Helper()
	var evs []kv.Event
	for len(evs) < n {
		r := recv(t, ch)
		if r.Err != nil {
			t.Fatalf("watch error after %d events: %v", len(evs), r.Err)
		}
		evs = append(evs, r.Events...)
	}
	if len(evs) != n {
		t.Fatalf("got %d events, want %d", len(evs), n)
	}
	return evs
}

// recvErr reads the terminal error response and checks the channel closes.
func recvErr(t *testing.T, ch kv.WatchChan) error {
	t.Helper()
	r := recv(t, ch)
	if r.Err == nil {
		t.Fatalf("got events %v, want an error response", r.Events)
	}
	expectClosed(t, ch)
	return r.Err
}

// drain reads ch until it is closed and returns what it read.
func drain(t *testing.T, ch kv.WatchChan) []kv.WatchResponse {
	t.Helper()
	var rs []kv.WatchResponse
	timeout := time.After(waitTimeout)
	for {
		select {
		case r, ok := <-ch:
			if !ok {
				return rs
			}
			rs = append(rs, r)
		case <-timeout:
			t.Fatal("timed out waiting for the watch channel to close")
		}
	}
}

func expectClosed(t *testing.T, ch kv.WatchChan) {
	t.Helper()
	select {
	case r, ok := <-ch:
		if ok {
			t.Fatalf("got %+v, want the channel closed", r)
		}
	case <-time.After(waitTimeout):
		t.Fatal("timed out waiting for the watch channel to close")
	}
}

// expectQuiet checks that ch delivers nothing for a short while. It is
// only a smoke check: a bug can slip past it, never the other way round.
func expectQuiet(t *testing.T, ch kv.WatchChan) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("got %+v, want nothing", r)
	case <-time.After(50 * time.Millisecond):
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

func newKV(t *testing.T, opts ...Option) *KV {
	t.Helper()
	m := New(opts...)
	t.Cleanup(func() { m.Close() })
	return m
}

func put(t *testing.T, k kv.KV, key, value string) int64 {
	t.Helper()
	rev, err := kv.Put(context.Background(), k, key, []byte(value))
	if err != nil {
		t.Fatalf("put %q: %v", key, err)
	}
	return rev
}

func mustTxn(t *testing.T, s *Store, txn kv.Txn) kv.TxnResponse {
	t.Helper()
	r, err := s.Txn(txn, DefaultMaxTxnOps)
	if err != nil {
		t.Fatalf("txn: %v", err)
	}
	return r
}
