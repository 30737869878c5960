package memkv

import (
	"bytes"
	"context"
	"strings"

	"github.com/chanwatch/chanwatch/kv"
)

// Bounds on one pass of a watcher over the history, so that a catching-up
// watcher holds the read lock briefly and sends responses of sane size. A
// revision is never split: a response may exceed maxWatchEvents by the
// events of its last revision.
const (
	maxWatchEvents = 1024
	maxWatchScan   = 4096
)

// Watch delivers the events on keys with the given raw prefix from fromRev
// on (fromRev <= 0: Rev()+1), following the kv.Watcher contract. Each watch
// runs its own goroutine that catches up from the history and then follows
// new revisions; writers never wait for it. When fromRev, or the next
// revision a lagging watcher needs, is at or below CompactRev(), the watch
// ends with a *kv.CompactedError. After Restore, a watcher whose next
// revision is still in the restored history (or above the restored
// revision) goes on without gap or duplicate; others end with a
// *kv.CompactedError. Close ends it with kv.ErrClosed; ctx done closes the
// channel without an error response. An invalid prefix ends it at once
// with kv.ErrInvalidKey.
func (s *Store) Watch(ctx context.Context, prefix string, fromRev int64) kv.WatchChan {
	return s.watch(ctx, prefix, fromRev, watchHooks{})
}

// watchHooks let a KV handle gate and end its watches (Hang, DropWatches,
// handle Close) without a forwarding goroutine.
type watchHooks struct {
	gate    <-chan struct{} // when set, wait for it before delivering
	stop    <-chan struct{} // when closed, end with stopErr()
	stopErr func() error
}

func (s *Store) watch(ctx context.Context, prefix string, fromRev int64, h watchHooks) kv.WatchChan {
	ch := make(chan kv.WatchResponse, 1)
	if err := kv.ValidatePrefix(prefix); err != nil {
		ch <- kv.WatchResponse{Err: err}
		close(ch)
		return ch
	}
	s.mu.RLock()
	closed := s.closed
	if fromRev <= 0 {
		fromRev = s.rev + 1
	}
	s.mu.RUnlock()
	if closed {
		ch <- kv.WatchResponse{Err: kv.ErrClosed}
		close(ch)
		return ch
	}
	w := &watcher{s: s, ctx: ctx, ch: ch, prefix: prefix, next: fromRev, hooks: h}
	go w.run()
	return ch
}

type watcher struct {
	s      *Store
	ctx    context.Context
	ch     chan kv.WatchResponse
	prefix string
	next   int64 // the next revision to deliver
	hooks  watchHooks
}

func (w *watcher) run() {
	defer close(w.ch)
	if w.hooks.gate != nil {
		select {
		case <-w.hooks.gate:
		case <-w.ctx.Done():
			return
		case <-w.hooks.stop:
			w.finish(w.hooks.stopErr())
			return
		case <-w.s.done:
			w.finish(kv.ErrClosed)
			return
		}
	}
	for {
		if w.ctx.Err() != nil {
			return
		}
		events, upTo, notify, err := w.collect()
		if err != nil {
			w.finish(err)
			return
		}
		if len(events) > 0 {
			select {
			case w.ch <- kv.WatchResponse{Events: events}:
			case <-w.ctx.Done():
				return
			case <-w.hooks.stop:
				w.finish(w.hooks.stopErr())
				return
			case <-w.s.done:
				w.finish(kv.ErrClosed)
				return
			}
		}
		w.next = upTo + 1
		if notify == nil {
			continue
		}
		select {
		case <-notify:
		case <-w.ctx.Done():
			return
		case <-w.hooks.stop:
			w.finish(w.hooks.stopErr())
			return
		case <-w.s.done:
			w.finish(kv.ErrClosed)
			return
		}
	}
}

// finish sends the terminal response unless the consumer has gone.
func (w *watcher) finish(err error) {
	select {
	case w.ch <- kv.WatchResponse{Err: err}:
	case <-w.ctx.Done():
	}
}

// collect returns the matching events of the revisions from w.next to upTo
// (one bounded pass), and, when it has caught up with the store, a channel
// that is closed at the next write.
func (w *watcher) collect() (events []kv.Event, upTo int64, notify <-chan struct{}, err error) {
	s := w.s
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return nil, 0, nil, kv.ErrClosed
	}
	if w.next <= s.compactRev {
		err = &kv.CompactedError{CompactRevision: s.compactRev}
		s.mu.RUnlock()
		return nil, 0, nil, err
	}
	rev := max(w.next, s.histBase+1)
	upTo = w.next - 1
	scanned := 0
	for ; rev <= s.rev && scanned < maxWatchScan && len(events) < maxWatchEvents; rev++ {
		i := rev - s.histBase - 1
		start, end := s.histStarts[i], s.histOff+int64(len(s.hist))
		if i+1 < int64(len(s.histStarts)) {
			end = s.histStarts[i+1]
		}
		for _, e := range s.hist[start-s.histOff : end-s.histOff] {
			if !strings.HasPrefix(e.key, w.prefix) {
				continue
			}
			ev := kv.Event{Type: kv.EventDelete, KV: kv.KeyValue{Key: e.key, ModRevision: rev}}
			if !e.del {
				ev = kv.Event{Type: kv.EventPut, KV: kv.KeyValue{
					Key:            e.key,
					Value:          e.value, // cloned below, outside the lock
					CreateRevision: e.createRevision,
					ModRevision:    rev,
					Version:        e.version,
					Lease:          e.lease,
				}}
			}
			events = append(events, ev)
		}
		upTo = rev
		scanned++
	}
	if upTo >= s.rev && len(events) == 0 {
		notify = s.notify
		s.waiting.Store(true)
	}
	s.mu.RUnlock()
	for i := range events {
		events[i].KV.Value = bytes.Clone(events[i].KV.Value)
	}
	return events, upTo, notify, nil
}

// Watch delivers the events on keys with prefix from fromRev on; see
// kv.Watcher. Besides the contract's endings, a watch of this handle ends
// with the injected error of FailNext, with kv.ErrUnavailable on
// DropWatches and with kv.ErrClosed when the handle is closed; while the
// handle hangs it delivers nothing.
func (m *KV) Watch(ctx context.Context, prefix string, fromRev int64) kv.WatchChan {
	hooks, err := m.watchHooks()
	if err != nil {
		ch := make(chan kv.WatchResponse, 1)
		ch <- kv.WatchResponse{Err: err}
		close(ch)
		return ch
	}
	if fromRev <= 0 {
		// Resolve "from now" at the call, not when a hung watch starts.
		fromRev = m.sh.store.Rev() + 1
	}
	return m.sh.store.watch(ctx, prefix, fromRev, hooks)
}
