package nodewatch

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/chanwatch/chanwatch/kv"
)

// acker sends an incarnation's compare-and-swaps (acknowledgements and
// progress heartbeats) to the store, several in one txn when several are
// waiting: a node that answers a burst of assignments (a placement, a
// drain onto it) makes one write per burst instead of one per channel.
// One txn is in flight at a time; whatever queues meanwhile goes in the
// next, so a lone answer waits for nothing.
//
// A batch is If(every key's mod revision is its last) Then(every put)
// Else(every get), so each key is still written only over the revision its
// worker read, exactly as alone. When a batch fails, the Else reads say
// which keys moved on: those get their answer, the others are sent again
// at once. Every caller gets the outcome its own txn would have had:
// applied at a revision, refused with the key's current value (nil when
// deleted), or an error; an unknown outcome (kv.ErrUnknownOutcome) goes to
// every caller of the batch, each resolving it by reading its own key back.
// A batch the store refuses as too large is split into single txns (one
// too large with an unknown outcome may have landed: that is an unknown
// outcome, as above). Two answers for one key never share a txn.
type acker struct {
	b    kv.Backend
	wake chan struct{}
	done chan struct{} // closed when run returns

	mu     sync.Mutex
	queue  []*casReq
	closed error // set when run returns: what later callers get
}

// casReq is one caller's compare-and-swap and its answer.
type casReq struct {
	key   string
	last  int64
	val   []byte
	alone bool // send in a txn of its own (its batch was too large)
	res   chan casResult
}

// casResult is what one txn of a single CAS would have answered.
type casResult struct {
	ok  bool
	rev int64        // the txn's revision
	cur *kv.KeyValue // when !ok and err == nil: the key now, nil when missing
	err error
}

func newAcker(b kv.Backend) *acker {
	return &acker{b: b, wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// cas queues If(ModRevision(key)==last) Then(Put(key, val)) Else(Get(key))
// (in a txn of its own when alone) and waits for its outcome, or for ctx. A caller that leaves early may
// still have its write sent; callers pass the incarnation's ctx, whose end
// ends run too, so nothing is written after it.
func (a *acker) cas(ctx context.Context, key string, last int64, val []byte, alone bool) casResult {
	r := &casReq{key: key, last: last, val: val, alone: alone, res: make(chan casResult, 1)}
	a.mu.Lock()
	if a.closed != nil {
		err := a.closed
		a.mu.Unlock()
		return casResult{err: err}
	}
	a.queue = append(a.queue, r)
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
	select {
	case res := <-r.res:
		return res
	case <-ctx.Done():
		return casResult{err: ctx.Err()}
	}
}

// run sends queued batches until ctx ends, then answers what is left with
// ctx's error.
func (a *acker) run(ctx context.Context) {
	defer close(a.done)
	for {
		select {
		case <-a.wake:
		case <-ctx.Done():
			a.mu.Lock()
			a.closed = fmt.Errorf("nodewatch: acknowledgement not sent: %w", ctx.Err())
			left := a.queue
			a.queue = nil
			a.mu.Unlock()
			for _, r := range left {
				r.res <- casResult{err: a.closed}
			}
			return
		}
		for {
			batch := a.take()
			if len(batch) == 0 {
				break
			}
			a.send(ctx, batch)
		}
	}
}

// take dequeues the longest prefix of the queue that fits one txn (at least
// one request; a request marked alone goes by itself). The prefix ends
// before a second request for a key already in it: a txn may write a key
// only once (etcd refuses it as a duplicate key, the other backends with
// kv.ErrInvalidTxn), and two answers for one key must apply in order, the
// second comparing against what the first left.
func (a *acker) take() []*casReq {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.queue) == 0 {
		return nil
	}
	maxOps, maxBytes := a.b.MaxTxnOps(), a.b.MaxTxnBytes()
	n, size := 0, 0
	keys := make(map[string]struct{}, len(a.queue))
	for _, r := range a.queue {
		if r.alone && n > 0 {
			break
		}
		if _, dup := keys[r.key]; dup {
			break
		}
		keys[r.key] = struct{}{}
		s := casBytes(r)
		if n > 0 && (n+1 > maxOps || size+s > maxBytes) {
			break
		}
		n, size = n+1, size+s
		if r.alone {
			break
		}
	}
	batch := make([]*casReq, n)
	copy(batch, a.queue)
	a.queue = append(a.queue[:0], a.queue[n:]...)
	return batch
}

// casBytes is what one request adds to a txn's kv.TxnBytes.
func casBytes(r *casReq) int {
	return kv.TxnBytes(casTxn([]*casReq{r}))
}

func casTxn(batch []*casReq) kv.Txn {
	t := kv.Txn{
		If:   make([]kv.Cmp, len(batch)),
		Then: make([]kv.Op, len(batch)),
		Else: make([]kv.Op, len(batch)),
	}
	for i, r := range batch {
		t.If[i] = kv.CmpModRevision(r.key, kv.Equal, r.last)
		t.Then[i] = kv.OpPut(r.key, r.val)
		t.Else[i] = kv.OpGet(r.key)
	}
	return t
}

// send runs one batch and answers each request in it, or queues again at
// the front those whose compare held in a batch another key failed.
func (a *acker) send(ctx context.Context, batch []*casReq) {
	resp, err := a.b.Txn(ctx, casTxn(batch))
	switch {
	case err == nil && resp.Succeeded:
		for _, r := range batch {
			r.res <- casResult{ok: true, rev: resp.Revision}
		}
		return
	case errors.Is(err, kv.ErrTxnTooLarge) && len(batch) > 1 && !errors.Is(err, kv.ErrUnknownOutcome):
		// Refused, not applied: send each alone. (Too large with an
		// unknown outcome may have landed: resent, each single txn would
		// be refused over the batch's own write. It goes to the callers,
		// as any unknown outcome; each reads its key back and, if the
		// batch did not land, sends its answer again alone.)
		for _, r := range batch {
			r.alone = true
		}
		a.requeue(batch)
		return
	case err != nil:
		for _, r := range batch {
			r.res <- casResult{err: err}
		}
		return
	}
	if len(resp.Responses) != len(batch) {
		err := fmt.Errorf("nodewatch: the store answered %d reads for a batch of %d compare-and-swaps", len(resp.Responses), len(batch))
		for _, r := range batch {
			r.res <- casResult{err: err}
		}
		return
	}
	var again []*casReq
	for i, r := range batch {
		cur := resp.Responses[i].KV
		if cur != nil && cur.ModRevision == r.last && len(batch) > 1 {
			again = append(again, r) // its compare held: another key failed the batch
			continue
		}
		r.res <- casResult{rev: resp.Revision, cur: cur}
	}
	if len(again) == len(batch) {
		// Every compare held at the revision the batch was refused at: not
		// a store that honours the contract. Send them alone.
		for _, r := range again {
			r.alone = true
		}
	}
	a.requeue(again)
}

// requeue puts rs back at the front of the queue, in order.
func (a *acker) requeue(rs []*casReq) {
	if len(rs) == 0 {
		return
	}
	a.mu.Lock()
	a.queue = append(rs, a.queue...)
	a.mu.Unlock()
}
