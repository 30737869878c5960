package nodewatch

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/memkv"
)

// ackCase is one compare-and-swap a test queues on an acker.
type ackCase struct {
	key  string
	last int64 // 0: the key's current mod revision
	val  string
}

// queueAll puts the keys in place, queues one CAS per case on a fresh
// acker before it runs (so that they can go in one batch), runs it, and
// returns each case's outcome.
func queueAll(t *testing.T, store *memkv.KV, cases []ackCase) []casResult {
	t.Helper()
	return queueAllOn(t, store, store, cases)
}

// queueAllOn is queueAll with the acker on b (store, or a wrapper of it).
func queueAllOn(t *testing.T, store *memkv.KV, b kv.Backend, cases []ackCase) []casResult {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	for i, c := range cases {
		if c.last != 0 {
			continue
		}
		resp, err := store.Txn(ctx, kv.Txn{Then: []kv.Op{kv.OpPut(c.key, []byte("assigned"))}})
		if err != nil {
			t.Fatal(err)
		}
		cases[i].last = resp.Revision
	}
	a := newAcker(b)
	out := make([]casResult, len(cases))
	done := make(chan int, len(cases))
	for i, c := range cases {
		go func() {
			out[i] = a.cas(ctx, c.key, c.last, []byte(c.val), false)
			done <- i
		}()
	}
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		a.mu.Lock()
		n := len(a.queue)
		a.mu.Unlock()
		if n == len(cases) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d compare-and-swaps queued after 30s", n, len(cases))
		}
		<-tick.C
	}
	go a.run(ctx)
	for range cases {
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatal("an acker call did not return within 30s")
		}
	}
	return out
}

func modRev(t *testing.T, store *memkv.KV, key string) int64 {
	t.Helper()
	cur, _, err := store.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	return cur.ModRevision
}

// A burst of answers is one txn: every key lands at one revision.
func TestAckerBatchesABurst(t *testing.T) {
	store := memkv.New()
	t.Cleanup(func() { _ = store.Close() })
	var cases []ackCase
	for i := range 20 {
		cases = append(cases, ackCase{key: fmt.Sprintf("channel/1/ch-%02d", i), val: "watched"})
	}
	out := queueAll(t, store, cases)
	rev := out[0].rev
	for i, r := range out {
		if !r.ok || r.err != nil || r.rev != rev {
			t.Fatalf("case %d: %+v, want applied at revision %d with the rest", i, r, rev)
		}
		if got := modRev(t, store, cases[i].key); got != rev {
			t.Fatalf("%s at revision %d, want %d", cases[i].key, got, rev)
		}
	}
}

// A key the coordinator moved on from fails only its own answer: the
// others land (in one more txn), and its caller gets the key as it is now.
// Siblings: the moved key first, in the middle, and deleted.
func TestAckerOneKeyMovedOn(t *testing.T) {
	for _, tc := range []struct {
		name   string
		moved  int
		delete bool
	}{{"first", 0, false}, {"middle", 2, false}, {"deleted", 4, true}} {
		t.Run(tc.name, func(t *testing.T) {
			store := memkv.New()
			t.Cleanup(func() { _ = store.Close() })
			cases := make([]ackCase, 5)
			for i := range cases {
				cases[i] = ackCase{key: fmt.Sprintf("channel/1/ch-%d", i), val: "watched"}
			}
			// The moved key is rewritten after its worker read it.
			moved := cases[tc.moved].key
			resp, err := store.Txn(t.Context(), kv.Txn{Then: []kv.Op{kv.OpPut(moved, []byte("assigned"))}})
			if err != nil {
				t.Fatal(err)
			}
			cases[tc.moved].last = resp.Revision
			op := kv.OpPut(moved, []byte("to-release"))
			if tc.delete {
				op = kv.OpDelete(moved)
			}
			if _, err := store.Txn(t.Context(), kv.Txn{Then: []kv.Op{op}}); err != nil {
				t.Fatal(err)
			}
			out := queueAll(t, store, cases)
			var rev int64
			for i, r := range out {
				if i == tc.moved {
					switch {
					case r.ok || r.err != nil:
						t.Fatalf("moved key: %+v, want refused", r)
					case tc.delete && r.cur != nil:
						t.Fatalf("deleted key: got current value %q, want none", r.cur.Value)
					case !tc.delete && (r.cur == nil || string(r.cur.Value) != "to-release"):
						t.Fatalf("moved key: current value %+v, want to-release", r.cur)
					}
					continue
				}
				if !r.ok || r.err != nil {
					t.Fatalf("case %d: %+v, want applied", i, r)
				}
				if rev == 0 {
					rev = r.rev
				}
				if r.rev != rev {
					t.Fatalf("case %d landed at %d, others at %d: want one txn for the keys that held", i, r.rev, rev)
				}
			}
			if _, _, err := store.Get(t.Context(), moved); tc.delete && !errors.Is(err, kv.ErrKeyNotFound) {
				t.Fatalf("deleted key came back: %v", err)
			}
		})
	}
}

// A value too large alone is refused to its own caller only, whether the
// acker packed around it by the reported limit or the store refused a
// batch the reported limit allowed (a limit the backend underreports, as a
// client-side one can be): then the batch is sent key by key.
func TestAckerTooLarge(t *testing.T) {
	one := kv.TxnBytes(casTxn([]*casReq{{key: "channel/1/ch-0", val: make([]byte, 100)}}))
	for _, tc := range []struct {
		name     string
		reported int
	}{{"packed", 0}, {"split", 1 << 30}} {
		t.Run(tc.name, func(t *testing.T) {
			store := memkv.New(memkv.WithMaxTxnBytes(2 * one))
			t.Cleanup(func() { _ = store.Close() })
			var b kv.Backend = store
			if tc.reported != 0 {
				b = overLimit{store, tc.reported}
			}
			cases := []ackCase{
				{key: "channel/1/ch-0", val: string(make([]byte, 100))},
				{key: "channel/1/ch-1", val: string(make([]byte, 100))},
				{key: "channel/1/ch-2", val: string(make([]byte, 10*one))}, // never fits
				{key: "channel/1/ch-3", val: string(make([]byte, 100))},
			}
			out := queueAllOn(t, store, b, cases)
			for i, r := range out {
				if i == 2 {
					if !errors.Is(r.err, kv.ErrTxnTooLarge) {
						t.Fatalf("oversized answer: %+v, want ErrTxnTooLarge", r)
					}
					continue
				}
				if !r.ok || r.err != nil {
					t.Fatalf("case %d: %+v, want applied", i, r)
				}
			}
		})
	}
}

// overLimit reports a larger MaxTxnBytes than its store enforces.
type overLimit struct {
	*memkv.KV
	reported int
}

func (o overLimit) MaxTxnBytes() int { return o.reported }

// An unknown outcome reaches every caller of the batch, each to resolve
// by reading its own key back; a later batch still works.
func TestAckerUnknownOutcomeToAll(t *testing.T) {
	store := memkv.New()
	t.Cleanup(func() { _ = store.Close() })
	cases := []ackCase{{key: "channel/1/a", val: "x"}, {key: "channel/1/b", val: "y"}}
	for i, c := range cases {
		resp, err := store.Txn(t.Context(), kv.Txn{Then: []kv.Op{kv.OpPut(c.key, []byte("assigned"))}})
		if err != nil {
			t.Fatal(err)
		}
		cases[i].last = resp.Revision
	}
	store.FailNextTxn(1, kv.ErrUnknownOutcome)
	out := queueAll(t, store, cases)
	for i, r := range out {
		if !errors.Is(r.err, kv.ErrUnknownOutcome) {
			t.Fatalf("case %d: %+v, want ErrUnknownOutcome", i, r)
		}
	}
	out = queueAll(t, store, []ackCase{{key: "channel/1/c", val: "z"}})
	if !out[0].ok {
		t.Fatalf("after the failure: %+v, want applied", out[0])
	}
}

// Two answers for one key queued together are not one txn: a store refuses
// a txn that writes a key twice (etcd: "duplicate key given in txn
// request", memkv and raftkv: kv.ErrInvalidTxn), which would fail every
// caller of the batch, and the retries, queued together again, forever.
// They go in order, each with the outcome its own txn would have had: the
// first lands, the second (over the same revision) is refused and sees
// the first; the other key of the burst is not held up.
func TestAckerSameKeyTwice(t *testing.T) {
	store := memkv.New()
	t.Cleanup(func() { _ = store.Close() })
	resp, err := store.Txn(t.Context(), kv.Txn{Then: []kv.Op{kv.OpPut("channel/1/a", []byte("assigned")), kv.OpPut("channel/1/b", []byte("assigned"))}})
	if err != nil {
		t.Fatal(err)
	}
	rev := resp.Revision
	out := queueAll(t, store, []ackCase{
		{key: "channel/1/a", last: rev, val: "progress"},
		{key: "channel/1/b", last: rev, val: "watched"},
		{key: "channel/1/a", last: rev, val: "watched"},
	})
	var landed, refused []int
	for _, i := range []int{0, 2} {
		switch r := out[i]; {
		case r.err != nil:
			t.Fatalf("case %d: %v, want an answer", i, r.err)
		case r.ok:
			landed = append(landed, i)
		default:
			refused = append(refused, i)
		}
	}
	if len(landed) != 1 || len(refused) != 1 {
		t.Fatalf("same-key answers: landed %v, refused %v, want one each", landed, refused)
	}
	cur := out[refused[0]].cur
	if cur == nil || cur.ModRevision != out[landed[0]].rev {
		t.Fatalf("refused answer saw %+v, want the key at revision %d", cur, out[landed[0]].rev)
	}
	if r := out[1]; !r.ok || r.err != nil {
		t.Fatalf("other key: %+v, want applied", r)
	}
}

// appliedTooLarge applies its next txn, then reports it refused as too
// large with an unknown outcome: what etcdkv returns when this client
// refuses the response of a txn the server applied ("received message
// larger than max").
type appliedTooLarge struct {
	*memkv.KV
	left int
}

func (a *appliedTooLarge) Txn(ctx context.Context, t kv.Txn) (kv.TxnResponse, error) {
	resp, err := a.KV.Txn(ctx, t)
	if err == nil && a.left > 0 {
		a.left--
		return kv.TxnResponse{}, fmt.Errorf("%w (%w): received message larger than max", kv.ErrTxnTooLarge, kv.ErrUnknownOutcome)
	}
	return resp, err
}

// A batch refused as too large with an unknown outcome may have landed: it
// is not split and resent (each single txn would then be refused over the
// batch's own write, and its caller told the coordinator moved on, so a
// Watched ack would release a channel its key says runs); every caller
// gets the unknown outcome, to read its own key back.
func TestAckerTooLargeUnknownNotResent(t *testing.T) {
	store := memkv.New()
	t.Cleanup(func() { _ = store.Close() })
	b := &appliedTooLarge{KV: store, left: 1}
	cases := []ackCase{{key: "channel/1/a", val: "watched"}, {key: "channel/1/b", val: "watched"}}
	out := queueAllOn(t, store, b, cases)
	for i, r := range out {
		if !r.ok && r.err == nil {
			t.Fatalf("case %d: refused (key now %q) although the batch's write landed: want the unknown outcome", i, r.cur.Value)
		}
		if r.err != nil && !errors.Is(r.err, kv.ErrUnknownOutcome) {
			t.Fatalf("case %d: %v, want the unknown outcome", i, r.err)
		}
	}
}
