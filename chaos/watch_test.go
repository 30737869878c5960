package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
)

// The watch check, after etcd's robustness suite: writers run txns of one to
// three puts and deletes on distinct keys, each put with a unique value;
// watchers follow the prefix through faults (broken watches resume from the
// last revision + 1; compacted ones re-list) and rebuild the state from the
// events. Checked per watcher:
//   - ordered: revisions never go backwards, and the events of one revision
//     arrive in one response (atomic);
//   - unique: no revision is delivered twice (duplicated);
//   - reliable: every write txn known to have succeeded, at a revision the
//     watcher covered (not inside a compaction gap it re-listed over), is
//     delivered, with exactly its puts and the deletes of keys that existed
//     (skipped otherwise);
//   - resumable: after all that, the rebuilt state equals the store's.

type watchKV interface {
	kv.KV
	kv.Watcher
}

type wOp struct {
	del   bool
	key   string
	value string
}

type wTxn struct {
	ops []wOp
	rev int64 // 0: unknown outcome
}

// watchWriters records the txns the writers ran.
type watchWriters struct {
	mu      sync.Mutex
	byRev   map[int64]wTxn
	unknown map[string]wTxn // by each put value of a txn whose outcome is unknown
	nTxn    int
	nUnk    int
	wait    func()
}

func runWatchWriters(ctx context.Context, n, keys int, rng *rand.Rand, writer func(i int) kv.KV) *watchWriters {
	ws := &watchWriters{byRev: map[int64]wTxn{}, unknown: map[string]wTxn{}}
	var seq atomic.Int64
	var wg sync.WaitGroup
	for i := range n {
		wrng := rand.New(rand.NewPCG(rng.Uint64(), uint64(i)))
		wg.Go(func() {
			for pace(ctx, time.Millisecond) {
				var txn wTxn
				var ops []kv.Op
				used := map[string]bool{}
				for range 1 + wrng.IntN(3) {
					key := fmt.Sprintf("w/k%02d", wrng.IntN(keys))
					if used[key] {
						continue
					}
					used[key] = true
					if wrng.IntN(4) == 0 {
						txn.ops = append(txn.ops, wOp{del: true, key: key})
						ops = append(ops, kv.OpDelete(key))
						continue
					}
					v := fmt.Sprintf("w%d-%d", i, seq.Add(1))
					txn.ops = append(txn.ops, wOp{key: key, value: v})
					ops = append(ops, kv.OpPut(key, []byte(v)))
				}
				octx, cancel := context.WithTimeout(ctx, time.Second)
				resp, err := writer(i).Txn(octx, kv.Txn{Then: ops})
				cancel()
				ws.mu.Lock()
				ws.nTxn++
				if err != nil {
					ws.nUnk++
					for _, o := range txn.ops {
						if !o.del {
							ws.unknown[o.value] = txn
						}
					}
				} else if resp.Revision > 0 {
					txn.rev = resp.Revision
					// A txn of deletes only may write nothing and report
					// the revision it read at: only txns with a put are
					// sure to be events.
					if hasPut(txn) {
						ws.byRev[resp.Revision] = txn
					}
				}
				ws.mu.Unlock()
				if err != nil {
					pace(ctx, 10*time.Millisecond)
				}
			}
		})
	}
	ws.wait = wg.Wait
	return ws
}

func hasPut(t wTxn) bool {
	for _, o := range t.ops {
		if !o.del {
			return true
		}
	}
	return false
}

// watcher follows the prefix w/ and rebuilds its state.
type watcher struct {
	id    int
	r     *report
	state map[string]string
	ws    *watchWriters

	mu        sync.Mutex
	last      int64 // last revision delivered
	coverFrom int64 // revisions > coverFrom and <= last are covered
	covered   [][2]int64
	seenRev   map[int64]bool
	resumes   int
	relists   int
	problems  int
}

func (w *watcher) lastRev() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

func (w *watcher) problem(format string, args ...any) {
	w.problems++
	w.r.violate("watcher %d: "+format, append([]any{w.id}, args...)...)
}

func (w *watcher) relist(ctx context.Context, b watchKV) (int64, error) {
	items, rev, err := b.List(ctx, "w/")
	if err != nil {
		return 0, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.last > w.coverFrom {
		w.covered = append(w.covered, [2]int64{w.coverFrom, w.last})
	}
	w.state = map[string]string{}
	for _, it := range items {
		w.state[it.Key] = string(it.Value)
	}
	w.last, w.coverFrom = rev, rev
	w.relists++
	return rev + 1, nil
}

// run follows the prefix until ctx is done; get returns the current handle.
func (w *watcher) run(ctx context.Context, get func() watchKV) {
	from := int64(0)
	for ctx.Err() == nil {
		if from == 0 {
			lctx, cancel := context.WithTimeout(ctx, time.Second)
			next, err := w.relist(lctx, get())
			cancel()
			if err != nil {
				pace(ctx, 20*time.Millisecond)
				continue
			}
			from = next
		}
		wctx, cancel := context.WithCancel(ctx)
		ch := get().Watch(wctx, "w/", from)
		for resp := range ch {
			if resp.Err != nil {
				if errors.Is(resp.Err, kv.ErrCompacted) {
					from = 0
				}
				break
			}
			w.apply(resp.Events)
		}
		cancel()
		if ctx.Err() != nil {
			break
		}
		w.mu.Lock()
		w.resumes++
		if from != 0 {
			from = w.last + 1
		}
		w.mu.Unlock()
		pace(ctx, 5*time.Millisecond)
	}
	w.mu.Lock()
	w.covered = append(w.covered, [2]int64{w.coverFrom, w.last})
	w.mu.Unlock()
}

func (w *watcher) apply(evs []kv.Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := 0; i < len(evs); {
		rev := evs[i].Revision()
		j := i
		for j < len(evs) && evs[j].Revision() == rev {
			j++
		}
		group := evs[i:j]
		i = j
		switch {
		case w.seenRev[rev]:
			w.r.addSkipDup(1)
			w.problem("revision %d delivered again", rev)
			continue
		case rev <= w.last:
			w.problem("revision %d after %d: out of order (or the rest of a split txn)", rev, w.last)
			continue
		}
		w.seenRev[rev] = true
		w.checkGroup(rev, group)
		for _, e := range group {
			if e.Type == kv.EventPut {
				w.state[e.KV.Key] = string(e.KV.Value)
			} else {
				delete(w.state, e.KV.Key)
			}
		}
		w.last = rev
	}
}

// checkGroup compares the events of one revision with the txn that wrote it.
func (w *watcher) checkGroup(rev int64, group []kv.Event) {
	w.ws.mu.Lock()
	txn, known := w.ws.byRev[rev]
	if !known {
		for _, e := range group {
			if e.Type == kv.EventPut {
				if t, ok := w.ws.unknown[string(e.KV.Value)]; ok {
					txn, known = t, true
				}
				break
			}
		}
	}
	w.ws.mu.Unlock()
	if !known {
		return // deletes only, of a txn whose outcome is unknown
	}
	var want, got []string
	for _, o := range txn.ops {
		switch {
		case !o.del:
			want = append(want, "PUT "+o.key+"="+o.value)
		case w.hasKey(o.key):
			want = append(want, "DELETE "+o.key)
		}
	}
	for _, e := range group {
		if e.Type == kv.EventPut {
			got = append(got, "PUT "+e.KV.Key+"="+string(e.KV.Value))
		} else {
			got = append(got, "DELETE "+e.KV.Key)
		}
	}
	sort.Strings(want)
	sort.Strings(got)
	if strings.Join(want, ",") != strings.Join(got, ",") {
		w.problem("revision %d: events %v, the txn wrote %v (split or partial txn)", rev, got, want)
	}
}

func (w *watcher) hasKey(k string) bool { _, ok := w.state[k]; return ok }

// skipped counts the known txns inside the watcher's covered ranges that it
// never got.
func (w *watcher) skipped() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ws.mu.Lock()
	defer w.ws.mu.Unlock()
	n := 0
	for rev := range w.ws.byRev {
		for _, c := range w.covered {
			if rev > c[0] && rev <= c[1] && !w.seenRev[rev] {
				n++
				w.r.violate("watcher %d: revision %d skipped (covered %d..%d)", w.id, rev, c[0]+1, c[1])
			}
		}
	}
	return n
}

type watchSetup struct {
	writers, watchers, keys int
	duration                time.Duration
	writer                  func(i int) kv.KV
	watch                   func(i int) watchKV
	// compact compacts at rev (nil: never).
	compact func(ctx context.Context, rev int64) error
	faults  func(ctx context.Context, rng *rand.Rand)
}

func watchTest(t *testing.T, r *report, s watchSetup) {
	rng := newRand(t)
	ctx := testCtx(t)
	wctx, stopWatchers := context.WithCancel(ctx)
	defer stopWatchers()
	writeCtx, stopWrites := context.WithTimeout(ctx, s.duration)
	defer stopWrites()
	ws := runWatchWriters(writeCtx, s.writers, s.keys, rng, s.writer)
	watchers := make([]*watcher, s.watchers)
	var wg sync.WaitGroup
	for i := range watchers {
		w := &watcher{id: i, r: r, ws: ws, seenRev: map[int64]bool{}}
		watchers[i] = w
		wg.Go(func() { w.run(wctx, func() watchKV { return s.watch(i) }) })
	}
	frng := rand.New(rand.NewPCG(rng.Uint64(), 2))
	crng := rand.New(rand.NewPCG(rng.Uint64(), 3))
	faultsDone := make(chan struct{})
	go func() {
		defer close(faultsDone)
		var cwg sync.WaitGroup
		if s.compact != nil {
			cwg.Go(func() {
				for pace(writeCtx, jitter(crng, 50*time.Millisecond, 200*time.Millisecond)) {
					cctx, cancel := context.WithTimeout(writeCtx, time.Second)
					_, rev, err := s.writer(0).Get(cctx, "w/none")
					if errors.Is(err, kv.ErrKeyNotFound) && rev > 20 {
						if err := s.compact(cctx, rev-10); err == nil {
							r.note("compacted at %d", rev-10)
						}
					}
					cancel()
				}
			})
		}
		s.faults(writeCtx, frng)
		cwg.Wait()
	}()
	<-faultsDone
	ws.wait()
	// The final state, written once everything healed.
	var final int64
	eventually(t, 30*time.Second, "a write after the faults healed", func() bool {
		octx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		rev, err := kv.Put(octx, s.writer(0), "w/end", []byte("end"))
		final = rev
		return err == nil
	})
	healed := time.Now()
	for _, w := range watchers {
		eventually(t, 30*time.Second, fmt.Sprintf("watcher %d reaches revision %d", w.id, final), func() bool { return w.lastRev() >= final })
	}
	r.figure("watch_catchup", time.Since(healed).Round(time.Millisecond))
	items, _, err := s.writer(0).List(ctx, "w/")
	if err != nil {
		t.Fatal(err)
	}
	stopWatchers()
	wg.Wait()
	store := map[string]string{}
	for _, it := range items {
		store[it.Key] = string(it.Value)
	}
	resumes, relists := 0, 0
	for _, w := range watchers {
		w.mu.Lock()
		resumes += w.resumes
		relists += w.relists - 1
		if fmt.Sprint(w.state) != fmt.Sprint(store) {
			r.violate("watcher %d rebuilt %v, the store holds %v", w.id, w.state, store)
		}
		w.mu.Unlock()
		r.addSkipDup(w.skipped())
	}
	ws.mu.Lock()
	r.figure("txns", ws.nTxn)
	r.figure("unknown", ws.nUnk)
	ws.mu.Unlock()
	r.figure("resumes", resumes)
	r.figure("relists", relists)
	r.figure("final_rev", final)
}
