package channelmgr

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/jonboulle/clockwork"
	"go.uber.org/zap"
)

// unit is the writes of one channel in one pass: they always share a txn.
type unit struct {
	ch   string
	cmps []kv.Cmp
	ops  []kv.Op
	done []func(rev int64) // after the txn succeeded at rev
}

// batch is one guarded txn of whole units.
type batch struct {
	units []*unit
	txn   kv.Txn
}

func (b *batch) channels() []string {
	out := make([]string, len(b.units))
	for i, u := range b.units {
		out[i] = u.ch
	}
	return out
}

// bytes is the unit's share of a txn's kv.TxnBytes.
func (u *unit) bytes() int { return kv.TxnBytes(kv.Txn{If: u.cmps, Then: u.ops}) }

// pack groups units into txns under maxOps entries per branch and under
// the backend's MaxTxnBytes (or below the smallest txn it refused as too
// large this term), the guard included. Units marked solo (their last
// batch failed a compare or was refused) go alone, so one conflicting
// channel cannot keep failing the others. A unit that cannot fit in any
// txn is not sent: it is held, logged once per channel revision, shown in
// the channels_too_large gauge, and decided again when the channel changes.
func (r *reconciler) pack(units []*unit) []*batch {
	units = byNode(units)
	maxOps := r.b.MaxTxnOps()
	maxBytes := r.b.MaxTxnBytes()
	if r.refused > 0 {
		maxBytes = min(maxBytes, r.refused)
	}
	var out []*batch
	var cur *batch
	curBytes := 0
	flush := func() {
		if cur != nil && len(cur.units) > 0 {
			out = append(out, cur)
		}
		cur = nil
	}
	open := func() *batch {
		return &batch{txn: kv.Txn{
			If: []kv.Cmp{r.l.Guard()},
			// On failure, read the leader key: deposed or a mere conflict?
			Else: []kv.Op{kv.OpGet(meta.CoordinatorKey)},
		}}
	}
	base := kv.TxnBytes(open().txn)
	held := 0
	for _, u := range units {
		rt := r.ch(u.ch)
		ub := u.bytes()
		if 1+len(u.cmps) > maxOps || len(u.ops) > maxOps || base+ub > maxBytes {
			held++
			if rev := r.chRev(u.ch); rt.tooLargeRev != rev {
				rt.tooLargeRev = rev
				r.log.Error("channel held: its writes exceed the backend's txn size (deregister it, or raise the backend's limit)",
					zap.String("channel", u.ch), zap.Int64("revision", rev), zap.Int("compares", len(u.cmps)),
					zap.Int("ops", len(u.ops)), zap.Int("bytes", base+ub), zap.Int("max_bytes", maxBytes), zap.Int("max_ops", maxOps))
			}
			continue
		}
		rt.tooLargeRev = 0
		solo := rt.solo
		if solo || cur == nil || len(cur.txn.If)+len(u.cmps) > maxOps || len(cur.txn.Then)+len(u.ops) > maxOps || curBytes+ub > maxBytes {
			flush()
			cur, curBytes = open(), base
		}
		cur.units = append(cur.units, u)
		cur.txn.If = append(cur.txn.If, u.cmps...)
		cur.txn.Then = append(cur.txn.Then, u.ops...)
		curBytes += ub
		if solo {
			flush()
		}
	}
	flush()
	r.c.m.tooLarge.Set(float64(held))
	return out
}

// byNode returns units ordered by the key they put (channel/<node>/...,
// prepare/<node>/...), stably, so that the writes for one node share txns:
// a node then gets a pass's channels in one watch response and answers
// them in one txn (nodewatch batches the answers it has at once), where
// units in channel order spread each node over every txn of the pass. The
// units of a pass touch disjoint channels, so their order changes no
// outcome.
func byNode(units []*unit) []*unit {
	putKey := func(u *unit) string {
		for _, op := range u.ops {
			if op.Type == kv.OpTypePut {
				return op.Key
			}
		}
		return ""
	}
	out := slices.Clone(units)
	slices.SortStableFunc(out, func(a, b *unit) int { return strings.Compare(putKey(a), putKey(b)) })
	return out
}

// chRev is the highest mod revision of the channel's registry and
// assignment keys in the view: it changes whenever the channel does.
func (r *reconciler) chRev(ch string) int64 {
	var rev int64
	if reg := r.v.registry[ch]; reg != nil {
		rev = reg.modRev
	}
	for _, k := range r.v.keys[ch] {
		rev = max(rev, k.modRev)
	}
	return rev
}

// execute sends the pass's units.
func (r *reconciler) execute(ctx context.Context, units []*unit, now time.Time) error {
	_, err := r.sendAll(ctx, r.pack(units), now)
	return err
}

// maxTxnsInFlight bounds the txns of one pass sent at once.
const maxTxnsInFlight = 8

// sendAll sends batches, up to maxTxnsInFlight at once, and records their
// outcomes in order, as exec does; it returns how many it sent. The
// batches of one pass touch disjoint channels (all of a channel's writes
// are in one unit), so the order in which they apply does not matter, and
// a drain of thousands of channels costs a few round trips, not one per
// batch.
func (r *reconciler) sendAll(ctx context.Context, batches []*batch, now time.Time) (int, error) {
	if len(batches) <= 1 {
		for _, b := range batches {
			if err := r.exec(ctx, b, now); err != nil {
				return len(batches), err
			}
		}
		return len(batches), nil
	}
	type result struct {
		resp kv.TxnResponse
		err  error
	}
	results := make([]result, len(batches))
	sem := make(chan struct{}, maxTxnsInFlight)
	var wg sync.WaitGroup
	for i, b := range batches {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			results[i].resp, results[i].err = r.txn(ctx, b.txn)
		}()
	}
	wg.Wait()
	for i, b := range batches {
		if err := r.record(ctx, b, results[i].resp, results[i].err, now); err != nil {
			return len(batches), err
		}
	}
	return len(batches), nil
}

// resend retries, unchanged, the batches whose outcome was unknown: the
// same compares make a second apply impossible, and until one attempt gets
// a definite answer their channels are not decided on again.
func (r *reconciler) resend(ctx context.Context, now time.Time) error {
	retry := r.retry
	r.retry = nil
	for i, b := range retry {
		if err := r.exec(ctx, b, now); err != nil {
			r.retry = append(r.retry, retry[i+1:]...)
			return err
		}
	}
	return nil
}

// permanent reports errors that mean the txn was rejected as malformed and
// was not applied: resending it would fail the same way.
func permanent(err error) bool {
	for _, e := range []error{kv.ErrTxnTooLarge, kv.ErrInvalidTxn, kv.ErrInvalidKey, kv.ErrLeaseNotFound, kv.ErrPermissionDenied} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func isLeaseGone(err error) bool { return errors.Is(err, kv.ErrLeaseNotFound) }

// txn sends t. If the term ends (ctx) while t is in flight, the call goes on
// for up to a session TTL on the clock, so that its answer (most likely a
// rejection by the leader guard, when a successor took over while this
// process was paused or cut off) is seen, counted and logged rather than
// lost to a cancel; the end of Run's context still cancels it at once.
func (r *reconciler) txn(ctx context.Context, t kv.Txn) (kv.TxnResponse, error) {
	outer := r.outer
	if outer == nil {
		outer = ctx
	}
	tctx, cancel := context.WithCancel(outer)
	defer cancel()
	var mu sync.Mutex
	var grace clockwork.Timer
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if tctx.Err() == nil {
			grace = r.clock.AfterFunc(r.cfg.sessionTTL, cancel)
		}
	})
	defer func() {
		stop()
		mu.Lock()
		if grace != nil {
			grace.Stop()
		}
		mu.Unlock()
	}()
	return r.b.Txn(tctx, t)
}

// exec sends one batch and records the outcome on its channels. It returns
// an error only when the term must end: ctx done, backend closed, or the
// txn showed that another coordinator leads.
func (r *reconciler) exec(ctx context.Context, b *batch, now time.Time) error {
	resp, err := r.txn(ctx, b.txn)
	return r.record(ctx, b, resp, err, now)
}

// record records the outcome of b's txn (resp, err) on its channels; see
// exec.
func (r *reconciler) record(ctx context.Context, b *batch, resp kv.TxnResponse, err error, now time.Time) error {
	m := r.c.m
	switch {
	case err != nil && ctx.Err() != nil:
		// Leadership or the process is ending; the guard keeps a late
		// apply of this txn harmless to a successor.
		return ctx.Err()
	case err != nil && errors.Is(err, kv.ErrClosed):
		return fmt.Errorf("channelmgr: txn: %w", err)
	case err != nil && errors.Is(err, kv.ErrTxnTooLarge):
		// Never resent unchanged: from now on pack builds only txns
		// smaller than this one, and its units go one by one.
		m.txns.WithLabelValues("too_large").Inc()
		n := kv.TxnBytes(b.txn)
		if r.refused == 0 || n-1 < r.refused {
			r.refused = max(1, n-1)
		}
		r.log.Warn("txn refused as too large; its channels are retried one by one in smaller txns",
			zap.Strings("channels", b.channels()), zap.Int64("revision", r.v.rev), zap.Int("bytes", n),
			zap.Int("ops", len(b.txn.Then)), zap.Int("max_bytes", r.refused), zap.Error(err))
		for _, u := range b.units {
			rt := r.ch(u.ch)
			rt.uncertain, rt.solo = false, true
			rt.pendingRev, rt.pendingUntil = r.v.rev+1, now.Add(r.cfg.checkInterval)
		}
		return nil
	case err != nil && permanent(err):
		m.txns.WithLabelValues("error").Inc()
		r.log.Error("txn rejected", zap.Strings("channels", b.channels()), zap.Int64("revision", r.v.rev), zap.Error(err))
		for _, u := range b.units {
			rt := r.ch(u.ch)
			rt.uncertain, rt.solo = false, true
			rt.pendingRev, rt.pendingUntil = r.v.rev+1, now.Add(r.cfg.checkInterval)
		}
		return nil
	case err != nil:
		m.txns.WithLabelValues("error").Inc()
		r.log.Warn("txn outcome unknown; will resend it unchanged", zap.Strings("channels", b.channels()),
			zap.Int64("revision", r.v.rev), zap.Error(err))
		for _, u := range b.units {
			r.ch(u.ch).uncertain = true
		}
		r.retry = append(r.retry, b)
		return nil
	case !resp.Succeeded:
		if r.deposed(resp) {
			m.fenced.Inc()
			r.log.Warn("write rejected by the leader guard: another coordinator leads", zap.Int64("revision", resp.Revision))
			return errDeposed
		}
		m.txns.WithLabelValues("conflict").Inc()
		r.log.Debug("txn compare failed; channels retried one by one", zap.Strings("channels", b.channels()),
			zap.Int64("revision", resp.Revision))
		for _, u := range b.units {
			rt := r.ch(u.ch)
			// The conflicting write is at or below resp.Revision; wait for
			// the view to see it, but not forever (etcd's revision is
			// global, so resp.Revision may be outside our root).
			rt.uncertain, rt.solo = false, true
			rt.pendingRev, rt.pendingUntil = resp.Revision, now.Add(r.cfg.checkInterval)
		}
		return nil
	}
	m.txns.WithLabelValues("ok").Inc()
	for _, u := range b.units {
		rt := r.ch(u.ch)
		// Our write is in our root, so the watch (or a re-list) delivers
		// resp.Revision: wait for it, however long. Deciding earlier, on
		// a view without our own write, would only fail compares.
		rt.uncertain, rt.solo = false, false
		rt.pendingRev, rt.pendingUntil = resp.Revision, time.Time{}
		for _, f := range u.done {
			f(resp.Revision)
		}
	}
	return nil
}

// deposed reads the Else branch of a failed batch: true when the leader key
// is gone or belongs to another term.
func (r *reconciler) deposed(resp kv.TxnResponse) bool {
	if len(resp.Responses) != 1 || resp.Responses[0].KV == nil {
		return true
	}
	return resp.Responses[0].KV.CreateRevision != r.l.Token()
}
