package bench

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
)

// tracker folds a root's channel and node-session keys into counts, from
// one List and the Watch after it, so scenarios can wait for "every channel
// Watched" as the store says it, not as any component believes it.
type tracker struct {
	mu        sync.Mutex
	changed   chan struct{} // closed and replaced on every change
	keys      map[string]tkey
	watched   int
	watchedOn map[int64]int
	live      map[int64]bool
	rev       int64
	err       error
	now       time.Time // when the response being applied arrived

	// hook, when set, is called (under mu) with every assignment key put
	// that decodes, when the tracker receives it: B8 splits a handoff's
	// gap with it.
	hook func(ch string, st meta.State, at time.Time)

	cancel context.CancelFunc
	done   chan struct{}
}

type tkey struct {
	node  int64
	state meta.State
}

func startTracker(ctx context.Context, b kv.Backend, hook func(ch string, st meta.State, at time.Time)) (*tracker, error) {
	t := &tracker{changed: make(chan struct{}), keys: map[string]tkey{}, watchedOn: map[int64]int{},
		live: map[int64]bool{}, done: make(chan struct{}), hook: hook}
	kvs, rev, err := b.List(ctx, "")
	if err != nil {
		return nil, err
	}
	for _, item := range kvs {
		t.apply(kv.Event{Type: kv.EventPut, KV: item})
	}
	t.rev = rev
	wctx, cancel := context.WithCancel(ctx)
	t.cancel = cancel
	wch := b.Watch(wctx, "", rev+1)
	go func() {
		defer close(t.done)
		for resp := range wch {
			t.mu.Lock()
			t.now = time.Now()
			if resp.Err != nil {
				t.err = resp.Err
			}
			for _, ev := range resp.Events {
				t.apply(ev)
				t.rev = max(t.rev, ev.Revision())
			}
			close(t.changed)
			t.changed = make(chan struct{})
			t.mu.Unlock()
		}
		t.mu.Lock()
		if t.err == nil {
			t.err = errors.New("bench: tracker watch ended")
		}
		close(t.changed)
		t.changed = make(chan struct{})
		t.mu.Unlock()
	}()
	return t, nil
}

func (t *tracker) stop() {
	t.cancel()
	<-t.done
}

// apply folds one event. Caller holds t.mu (or owns t).
func (t *tracker) apply(ev kv.Event) {
	key := ev.KV.Key
	switch {
	case strings.HasPrefix(key, meta.ChannelPrefix):
		old, had := t.keys[key]
		if had && old.state == meta.Watched {
			t.watched--
			t.watchedOn[old.node]--
		}
		if ev.Type != kv.EventPut {
			delete(t.keys, key)
			return
		}
		node, ch, err := meta.ParseChannelKey(key)
		if err != nil {
			return
		}
		k := tkey{node: node}
		if info, err := meta.DecodeChannelInfo(key, ev.KV.Value); err == nil {
			k.state = info.State
			if t.hook != nil && !t.now.IsZero() {
				t.hook(ch, info.State, t.now)
			}
		}
		t.keys[key] = k
		if k.state == meta.Watched {
			t.watched++
			t.watchedOn[node]++
		}
	case strings.HasPrefix(key, meta.NodeSessionPrefix):
		id, err := meta.ParseNodeSessionKey(key)
		if err != nil {
			return
		}
		if ev.Type == kv.EventPut {
			t.live[id] = true
		} else {
			delete(t.live, id)
		}
	}
}

// wait returns once pred holds (pred runs under the tracker's lock and may
// read its fields), or with ctx's error, or the watch's. pred is checked on
// every change and every 10ms, for predicates that also read state with no
// event (a node's ID is set just after its session key is written).
func (t *tracker) wait(ctx context.Context, pred func(t *tracker) bool) error {
	tk := time.NewTicker(10 * time.Millisecond)
	defer tk.Stop()
	for {
		t.mu.Lock()
		if pred(t) {
			t.mu.Unlock()
			return nil
		}
		if t.err != nil {
			err := t.err
			t.mu.Unlock()
			return err
		}
		ch := t.changed
		t.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		case <-tk.C:
		}
	}
}

// watchedExcept counts Watched keys on nodes other than those given.
// Caller holds t.mu (inside a wait predicate).
func (t *tracker) watchedExcept(nodes ...int64) int {
	n := t.watched
	for _, id := range nodes {
		n -= t.watchedOn[id]
	}
	return n
}

// snapshot returns the Watched counts per node.
func (t *tracker) snapshot() map[int64]int {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := make(map[int64]int, len(t.watchedOn))
	for id, n := range t.watchedOn {
		if n > 0 {
			m[id] = n
		}
	}
	return m
}
