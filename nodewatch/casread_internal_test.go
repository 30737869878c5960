package nodewatch

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/memkv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/jonboulle/clockwork"
)

// lateApply answers its first txn with an unknown outcome without applying
// it, and applies it right after the next read: a request that timed out
// on the client while it still sat in the server's log, applied after the
// node read its key back.
type lateApply struct {
	*memkv.KV
	mu      sync.Mutex
	armed   bool
	pending *kv.Txn
}

func (l *lateApply) Txn(ctx context.Context, t kv.Txn) (kv.TxnResponse, error) {
	l.mu.Lock()
	if l.armed {
		l.armed, l.pending = false, &t
		l.mu.Unlock()
		return kv.TxnResponse{}, fmt.Errorf("%w: deadline exceeded", kv.ErrUnknownOutcome)
	}
	l.mu.Unlock()
	return l.KV.Txn(ctx, t)
}

func (l *lateApply) Get(ctx context.Context, key string) (kv.KeyValue, int64, error) {
	cur, rev, err := l.KV.Get(ctx, key)
	l.mu.Lock()
	p := l.pending
	l.pending = nil
	l.mu.Unlock()
	if p != nil {
		if _, err := l.KV.Txn(ctx, *p); err != nil {
			return cur, rev, err
		}
	}
	return cur, rev, err
}

// An answer whose first send had an unknown outcome, read back as not
// applied, then applied late: the resend is refused over the node's own
// value. That is the answer in place, not the coordinator moving on (a
// Watched answer taken as rejected releases a channel its key says runs).
func TestCasReadUnknownOutcomeAppliedLate(t *testing.T) {
	store := memkv.New()
	t.Cleanup(func() { _ = store.Close() })
	key := meta.ChannelKey(1, "dml_0")
	assigned, err := meta.EncodeChannelInfo(meta.ChannelInfo{Name: "dml_0", CollectionID: 1, State: meta.ToWatch})
	if err != nil {
		t.Fatal(err)
	}
	last, err := kv.Put(t.Context(), store, key, assigned)
	if err != nil {
		t.Fatal(err)
	}
	b := &lateApply{KV: store, armed: true}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	inc := &incarnation{n: &Node{b: b, cfg: config{clock: clockwork.NewRealClock()}}, acks: newAcker(b), ctx: ctx}
	done := make(chan struct{})
	go func() { defer close(done); inc.acks.run(ctx) }()
	defer func() { cancel(); <-done }()
	ack := meta.ChannelInfo{Name: "dml_0", CollectionID: 1, State: meta.Watched, AssignRevision: last}
	ok, rev, cur, err := inc.casRead(ctx, key, last, ack)
	if err != nil || !ok {
		t.Fatalf("casRead = ok %v, rev %d, cur %+v, err %v: want the answer in place", ok, rev, cur, err)
	}
	if got, _, _ := store.Get(t.Context(), key); got.ModRevision != rev {
		t.Fatalf("casRead reported revision %d, key at %d", rev, got.ModRevision)
	}
}
