package conformance

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/stretchr/testify/require"
)

// RunKVWatch checks watch delivery: order, completeness, txn grouping,
// compaction, resumption, prefixes, termination and slow consumers.
func RunKVWatch(t *testing.T, f Factory) {
	runScenarios(t, f, []scenario{
		{"FromRevisionInOrder", watchFromRevisionInOrder},
		{"TxnEventsInOneResponse", watchTxnTogether},
		{"CompactedRevision", watchCompacted},
		{"ResumeAfterCancel", watchResume},
		{"FromRevisionZero", watchFromZero},
		{"PrefixExcludesOthers", watchPrefixExcludes},
		{"CancelClosesChannel", watchCancelCloses},
		{"SlowConsumer", watchSlowConsumer},
		{"CloseEndsWithErrClosed", watchCloseEnds},
		{"LeaseExpiryIsDelete", watchLeaseExpiry},
		{"IndependentWatchers", watchIndependent},
	})
}

// writeStep performs the i-th write txn of the ordered-history scenarios and
// returns the events it must produce. It does not fail the test itself, so
// it can run off the test goroutine.
func writeStep(ctx context.Context, b kv.KV, prefix string, i int) ([]evt, error) {
	key := fmt.Sprintf("%sk%03d", prefix, i)
	val := fmt.Sprintf("v%d", i)
	ops := []kv.Op{kv.OpPut(key, []byte(val))}
	if i%5 == 0 { // a multi-key txn
		ops = append(ops, kv.OpPut(key+"/a", []byte(val+"a")), kv.OpPut(key+"/b", []byte(val+"b")))
	}
	if i%7 == 0 { // a delete of the previous step's key, which exists
		ops = append(ops, kv.OpDelete(fmt.Sprintf("%sk%03d", prefix, i-1)))
	}
	resp, err := b.Txn(ctx, kv.Txn{Then: ops})
	if err != nil {
		return nil, fmt.Errorf("step %d: %w", i, err)
	}
	out := make([]evt, 0, len(ops))
	for _, op := range ops {
		if op.Type == kv.OpTypeDelete {
			out = append(out, delEvt(op.Key, resp.Revision))
		} else {
			out = append(out, putEvt(op.Key, string(op.Value), resp.Revision))
		}
	}
	return out, nil
}

// stepEvents is the number of events writeStep(i) produces.
func stepEvents(i int) int {
	n := 1
	if i%5 == 0 {
		n += 2
	}
	if i%7 == 0 {
		n++
	}
	return n
}

// requireWholeTxns checks that no revision is split across two responses:
// the events of one txn arrive together.
func requireWholeTxns(t testing.TB, responses [][]kv.Event) {
	t.Helper()
	var last int64
	for i, events := range responses {
		require.NotEmpty(t, events)
		require.Greater(t, events[0].Revision(), last, "response %d starts at revision %d, already seen in an earlier response: a txn was split", i, events[0].Revision())
		last = events[len(events)-1].Revision()
	}
}

func watchFromRevisionInOrder(t *testing.T, s *sc) {
	const prefix = "wo/"
	r0 := currentRevision(t, s.ctx, s.b)
	var want []evt
	for i := 1; i <= 20; i++ { // history before the watch starts
		evs, err := writeStep(s.ctx, s.b, prefix, i)
		require.NoError(t, err)
		want = append(want, evs...)
	}
	w := startWatch(t, s.ctx, s.b, prefix, r0+1)

	// Twenty more while the watch catches up, from another handle.
	writer := s.env.Open(t)
	var (
		wg      sync.WaitGroup
		live    []evt
		liveErr error
	)
	wg.Go(func() {
		for i := 21; i <= 40; i++ {
			evs, err := writeStep(s.ctx, writer, prefix, i)
			if err != nil {
				liveErr = err
				return
			}
			live = append(live, evs...)
		}
	})
	total := 0
	for i := 1; i <= 40; i++ {
		total += stepEvents(i)
	}
	got := w.next(total)
	wg.Wait()
	require.NoError(t, liveErr)
	want = append(want, live...)
	require.Equal(t, want, digest(got), "every event from fromRev on, in revision order, once")
	require.Equal(t, r0+1, got[0].Revision(), "the first event is at fromRev")
	w.requireNoMore(s.ctx, s.b, prefix)
}

func watchTxnTogether(t *testing.T, s *sc) {
	const prefix = "tg/"
	put(t, s.ctx, s.b, prefix+"gone", "x")
	put(t, s.ctx, s.b, prefix+"gone2", "x")
	r0 := currentRevision(t, s.ctx, s.b)
	w := startWatch(t, s.ctx, s.b, prefix, r0+1)

	resp := txn(t, s.ctx, s.b, kv.Txn{Then: []kv.Op{
		kv.OpPut(prefix+"b", []byte("1")),
		kv.OpPut(prefix+"a", []byte("2")),
		kv.OpPut("elsewhere", []byte("3")),
		kv.OpDelete(prefix + "gone"),
		kv.OpPut(prefix+"c", []byte("4")),
	}})
	first := w.response()
	require.NoError(t, first.Err)
	rev := resp.Revision
	require.Equal(t, []evt{
		putEvt(prefix+"b", "1", rev), putEvt(prefix+"a", "2", rev),
		delEvt(prefix+"gone", rev), putEvt(prefix+"c", "4", rev),
	}, digest(first.Events), "one response holds the txn's events in the order it wrote them")

	resp2 := txn(t, s.ctx, s.b, kv.Txn{Then: []kv.Op{
		kv.OpDelete(prefix + "gone2"),
		kv.OpPut(prefix+"a", []byte("5")),
	}})
	second := w.response()
	require.NoError(t, second.Err)
	require.Equal(t, []evt{delEvt(prefix+"gone2", resp2.Revision), putEvt(prefix+"a", "5", resp2.Revision)}, digest(second.Events))

	// The same from history: a watch that catches up may batch txns, but
	// never splits one.
	for i := 1; i <= 12; i++ {
		_, err := writeStep(s.ctx, s.b, prefix, i)
		require.NoError(t, err)
	}
	total := 4 + 2
	for i := 1; i <= 12; i++ {
		total += stepEvents(i)
	}
	h := startWatch(t, s.ctx, s.b, prefix, r0+1)
	var responses [][]kv.Event
	for n := 0; n < total; {
		r := h.response()
		require.NoError(t, r.Err)
		responses = append(responses, r.Events)
		n += len(r.Events)
		require.LessOrEqual(t, n, total, "more events than written")
	}
	requireWholeTxns(t, responses)
	h.requireNoMore(s.ctx, s.b, prefix)
}

func watchCompacted(t *testing.T, s *sc) {
	const prefix = "wc/"
	r1 := put(t, s.ctx, s.b, prefix+"k", "1")
	r2 := put(t, s.ctx, s.b, prefix+"k", "2")
	r3 := put(t, s.ctx, s.b, prefix+"k", "3")
	r4 := put(t, s.ctx, s.b, prefix+"k", "4")
	require.NoError(t, s.b.Compact(s.ctx, r3))

	for _, from := range []int64{r1, r2, r3} {
		w := startWatch(t, s.ctx, s.b, prefix, from)
		events, err := w.terminal()
		require.ErrorIs(t, err, kv.ErrCompacted, "a watch from %d, at or below the compact revision %d", from, r3)
		require.Equal(t, r3, kv.CompactRevision(err), "the error carries the compact revision")
		require.Empty(t, events, "no events from compacted history")
	}

	// Just above the compact revision works, and re-list + watch from the
	// list revision + 1 is the documented recovery.
	w := startWatch(t, s.ctx, s.b, prefix, r3+1)
	require.Equal(t, []evt{putEvt(prefix+"k", "4", r4)}, digest(w.next(1)))
	w.requireNoMore(s.ctx, s.b, prefix)

	_, lrev, err := s.b.List(s.ctx, prefix)
	require.NoError(t, err)
	w2 := startWatch(t, s.ctx, s.b, prefix, lrev+1)
	r := put(t, s.ctx, s.b, prefix+"k", "5")
	require.Equal(t, []evt{putEvt(prefix+"k", "5", r)}, digest(w2.next(1)))
}

func watchResume(t *testing.T, s *sc) {
	const prefix = "wr/"
	r0 := currentRevision(t, s.ctx, s.b)
	var want []evt
	for i := 1; i <= 6; i++ {
		evs, err := writeStep(s.ctx, s.b, prefix, i)
		require.NoError(t, err)
		want = append(want, evs...)
	}
	w := startWatch(t, s.ctx, s.b, prefix, r0+1)
	got := digest(w.next(3))
	require.Equal(t, want[:3], got)
	w.stop()
	w.requireClosed(promptTimeout)

	// Written while nobody watches.
	for i := 7; i <= 12; i++ {
		evs, err := writeStep(s.ctx, s.b, prefix, i)
		require.NoError(t, err)
		want = append(want, evs...)
	}
	// Resume after the last revision seen (steps 1-3 are one event each,
	// so the first watch stopped between txns).
	lastRev := got[len(got)-1].Rev
	var rest []evt
	for _, e := range want {
		if e.Rev > lastRev {
			rest = append(rest, e)
		}
	}
	w2 := startWatch(t, s.ctx, s.b, prefix, lastRev+1)
	require.Equal(t, rest, digest(w2.next(len(rest))), "a watch resumed at the last revision + 1 misses nothing")
	w2.requireNoMore(s.ctx, s.b, prefix)
}

func watchFromZero(t *testing.T, s *sc) {
	const prefix = "wz/"
	for i := range 3 {
		put(t, s.ctx, s.b, fmt.Sprintf("%sold%d", prefix, i), "old")
	}
	before := currentRevision(t, s.ctx, s.b)
	w := startWatch(t, s.ctx, s.b, prefix, 0)

	// A backend may register a fromRev-0 watch asynchronously, so keep
	// writing until events flow; every event must be one of these writes,
	// none from before the watch, and from the first one on none is missed.
	type write struct {
		key string
		rev int64
	}
	var writes []write
	var first kv.Event
	eventually(t, nil, func() bool {
		key := fmt.Sprintf("%snew%03d", prefix, len(writes))
		rev, err := kv.Put(s.ctx, s.b, key, []byte("new"))
		if err != nil {
			return false
		}
		writes = append(writes, write{key, rev})
		select {
		case resp := <-w.ch:
			if resp.Err != nil || len(resp.Events) == 0 {
				return false
			}
			first = resp.Events[0]
			w.pending = resp.Events[1:]
			return true
		default:
			return false
		}
	}, "a watch from revision 0 delivers new writes")
	require.Greater(t, first.Revision(), before, "a watch from 0 delivers no event from before it started")
	require.Equal(t, "new", string(first.KV.Value))
	var rest []evt
	for _, wr := range writes {
		if wr.rev > first.Revision() {
			rest = append(rest, putEvt(wr.key, "new", wr.rev))
		}
	}
	if len(rest) > 0 {
		require.Equal(t, rest, digest(w.next(len(rest))), "no gap after the first event")
	}
	w.requireNoMore(s.ctx, s.b, prefix)
}

func watchPrefixExcludes(t *testing.T, s *sc) {
	r0 := currentRevision(t, s.ctx, s.b)
	w := startWatch(t, s.ctx, s.b, "node/1/", r0+1)
	all := startWatch(t, s.ctx, s.b, "", r0+1)
	keys := []string{"node/12/a", "node/1", "node/1x", "node/1/a", "node/10/a", "other", "node/1/b"}
	var revs []int64
	for _, k := range keys {
		revs = append(revs, put(t, s.ctx, s.b, k, k))
	}
	require.Equal(t, []evt{putEvt("node/1/a", "node/1/a", revs[3]), putEvt("node/1/b", "node/1/b", revs[6])}, digest(w.next(2)))
	w.requireNoMore(s.ctx, s.b, "node/1/")

	// The empty prefix watches the whole root.
	var want []evt
	for i, k := range keys {
		want = append(want, putEvt(k, k, revs[i]))
	}
	got := digest(all.next(len(keys) + 1))
	require.Equal(t, want, got[:len(keys)])
	require.Equal(t, "node/1/~sentinel", got[len(keys)].Key)
}

func watchCancelCloses(t *testing.T, s *sc) {
	const prefix = "wx/"
	w := startWatch(t, s.ctx, s.b, prefix, 0)
	// Make sure the watch is live before cancelling it.
	eventually(t, nil, func() bool {
		if _, err := kv.Put(s.ctx, s.b, prefix+"ping", []byte("p")); err != nil {
			return false
		}
		select {
		case resp := <-w.ch:
			return resp.Err == nil && len(resp.Events) > 0
		default:
			return false
		}
	}, "the watch delivers")
	w.stop()
	w.requireClosed(promptTimeout) // fails on an error response: a cancel is not an error

	// The handle and other watches are unaffected.
	w2 := startWatch(t, s.ctx, s.b, prefix, currentRevision(t, s.ctx, s.b)+1)
	rev := put(t, s.ctx, s.b, prefix+"after", "a")
	require.Equal(t, []evt{putEvt(prefix+"after", "a", rev)}, digest(w2.next(1)))
}

func watchSlowConsumer(t *testing.T, s *sc) {
	const (
		prefix  = "ws/"
		writers = 4
		perW    = 500
	)
	r0 := currentRevision(t, s.ctx, s.b)
	w := startWatch(t, s.ctx, s.b, prefix, r0+1)
	// Nobody reads w while 2000 txns are written; a writer that blocks on
	// the watcher fails its deadline.
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for i := range writers {
		h := s.env.Open(t)
		wg.Go(func() {
			for j := range perW {
				ctx, cancel := context.WithTimeout(s.ctx, waitTimeout)
				_, err := kv.Put(ctx, h, fmt.Sprintf("%s%d/%04d", prefix, i, j), []byte("x"))
				cancel()
				if err != nil {
					errs <- fmt.Errorf("writer %d put %d: %w", i, j, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err, "a write blocked or failed while a watcher did not read")
	}

	got := w.next(writers * perW)
	next := make([]int, writers)
	for i, e := range got {
		require.Equal(t, r0+1+int64(i), e.Revision(), "event %d: revisions are contiguous, each txn once", i)
		var wi, j int
		_, err := fmt.Sscanf(e.KV.Key, prefix+"%d/%d", &wi, &j)
		require.NoError(t, err)
		require.Equal(t, next[wi], j, "writer %d's puts arrive in its order", wi)
		next[wi]++
	}
	w.requireNoMore(s.ctx, s.b, prefix)
}

func watchCloseEnds(t *testing.T, s *sc) {
	const prefix = "wce/"
	h := s.env.Open(t)
	w := startWatch(t, s.ctx, h, prefix, currentRevision(t, s.ctx, s.b)+1)
	obs := startWatch(t, s.ctx, s.b, prefix, currentRevision(t, s.ctx, s.b)+1)
	rev := put(t, s.ctx, s.b, prefix+"a", "1")
	require.Equal(t, []evt{putEvt(prefix+"a", "1", rev)}, digest(w.next(1)))

	require.NoError(t, h.Close())
	_, err := w.terminal()
	require.ErrorIs(t, err, kv.ErrClosed, "closing the backend ends its watches with ErrClosed")

	// Another handle's watch goes on.
	rev = put(t, s.ctx, s.b, prefix+"b", "2")
	require.Equal(t, []evt{putEvt(prefix+"a", "1", rev-1), putEvt(prefix+"b", "2", rev)}, digest(obs.next(2)))
}

func watchLeaseExpiry(t *testing.T, s *sc) {
	const prefix = "wl/"
	id, err := s.b.Grant(s.ctx, leaseTTL)
	require.NoError(t, err)
	r0 := currentRevision(t, s.ctx, s.b)
	resp := txn(t, s.ctx, s.b, kv.Txn{Then: []kv.Op{
		kv.OpPutLease(prefix+"a", []byte("1"), id),
		kv.OpPutLease(prefix+"b", []byte("2"), id),
		kv.OpPut(prefix+"keep", []byte("3")),
	}})
	require.Equal(t, r0+1, resp.Revision)
	w := startWatch(t, s.ctx, s.b, prefix, r0+1)
	require.Len(t, w.next(3), 3)

	expire(t, s, id, prefix+"a")
	del := w.response()
	require.NoError(t, del.Err)
	require.Len(t, del.Events, 2, "both keys of the lease go in one response")
	rev := del.Events[0].Revision()
	require.Equal(t, r0+2, rev, "the expiry is the next revision")
	require.ElementsMatch(t, []evt{delEvt(prefix+"a", rev), delEvt(prefix+"b", rev)}, digest(del.Events),
		"lease expiry shows as ordinary DELETE events of one revision")
	require.Equal(t, "3", string(get(t, s.ctx, s.b, prefix+"keep").Value))
	w.requireNoMore(s.ctx, s.b, prefix)
}

func watchIndependent(t *testing.T, s *sc) {
	const prefix = "wi/"
	r0 := currentRevision(t, s.ctx, s.b)
	h2 := s.env.Open(t)
	w1 := startWatch(t, s.ctx, s.b, prefix, r0+1)
	w2 := startWatch(t, s.ctx, h2, prefix, r0+1)
	total := 0
	for i := 1; i <= 15; i++ {
		_, err := writeStep(s.ctx, h2, prefix, i)
		require.NoError(t, err)
		total += stepEvents(i)
	}
	got1 := digest(w1.next(total))
	got2 := digest(w2.next(total))
	require.Equal(t, got1, got2, "two watchers of one prefix see the same history")
	w1.stop()
	w1.requireClosed(promptTimeout)
	// Cancelling one leaves the other running.
	rev := put(t, s.ctx, s.b, prefix+"z", "z")
	require.Equal(t, []evt{putEvt(prefix+"z", "z", rev)}, digest(w2.next(1)))
}
