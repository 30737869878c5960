package channelmgr

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
)

// bufferedWatch hands out watches whose responses, one per revision as
// etcd sends them, wait in a deep buffer, as etcd's client buffers them
// for a consumer that is busy.
type bufferedWatch struct {
	kv.Backend
	mu      sync.Mutex
	last    chan kv.WatchResponse
	lastRev int64 // of the last response buffered
}

func (b *bufferedWatch) Watch(ctx context.Context, prefix string, rev int64) kv.WatchChan {
	in := b.Backend.Watch(ctx, prefix, rev)
	out := make(chan kv.WatchResponse, 100000)
	b.mu.Lock()
	b.last = out
	b.mu.Unlock()
	go func() {
		defer close(out)
		for r := range in {
			evs := r.Events
			for len(evs) > 0 {
				n := 1
				for n < len(evs) && evs[n].Revision() == evs[0].Revision() {
					n++
				}
				out <- kv.WatchResponse{Events: evs[:n]}
				b.mu.Lock()
				b.lastRev = evs[0].Revision()
				b.mu.Unlock()
				evs = evs[n:]
			}
			if r.Err != nil {
				out <- kv.WatchResponse{Err: r.Err}
			}
		}
	}()
	return out
}

// buffered reports the responses waiting and the revision of the last.
func (b *bufferedWatch) buffered() (int, int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.last), b.lastRev
}

// A pass decides on everything the watch has delivered, however much and
// however short the last pass was: thousands of responses that arrived
// while a pass ran are all folded before the next. Before, only what fit
// in a fold window as long as the last pass's walk was folded; with
// passes of seconds (a million channels) the view fell further behind
// with every pass, its decisions (timeouts of channels long Watched,
// placements whose compares were bound to fail) went wrong, and placement
// stopped (B12).
func TestPassFoldsTheDeliveredBacklog(t *testing.T) {
	for _, tc := range []struct {
		name string
		tick bool // the clock's tick is due too when the pass ends
	}{{"events", false}, {"events and a tick", true}} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			b := &bufferedWatch{Backend: h.kv.NewClient()}
			c, err := New(b, h.coordOptions()...)
			if err != nil {
				t.Fatal(err)
			}
			var block atomic.Bool
			blocked, release := make(chan struct{}), make(chan struct{})
			var once sync.Once
			open := func() { once.Do(func() { close(release) }) }
			revs := make(chan int64, 1000)
			c.onPass = func(_ time.Time, rev int64) {
				select {
				case revs <- rev:
				default:
				}
				if block.CompareAndSwap(true, false) {
					close(blocked)
					<-release
				}
			}
			ctx, cancel := context.WithCancel(h.ctx)
			done := make(chan error, 1)
			go func() { done <- c.Run(ctx) }()
			defer func() { open(); cancel(); <-done }()
			h.eventually("leading", c.IsLeader)

			// Hold a pass open, and write while it is held: each put is a
			// response of its own.
			block.Store(true)
			if _, err := kv.Put(h.ctx, h.kv, "x/trigger", []byte("x")); err != nil {
				t.Fatal(err)
			}
			select {
			case <-blocked:
			case <-time.After(time.Minute):
				t.Fatal("no pass after a write")
			}
			const n = 3000
			var last int64
			for i := range n {
				if last, err = kv.Put(h.ctx, h.kv, fmt.Sprintf("x/%d", i), []byte("x")); err != nil {
					t.Fatal(err)
				}
			}
			h.eventually("all responses delivered", func() bool { _, rev := b.buffered(); return rev == last })
			if tc.tick {
				h.clk.Advance(step)
			}
			for len(revs) > 0 {
				<-revs
			}
			open()
			select {
			case rev := <-revs:
				if rev != last {
					t.Fatalf("the pass after the backlog decided on revision %d, want %d, the backlog's last", rev, last)
				}
			case <-time.After(time.Minute):
				t.Fatal("no pass after the backlog")
			}
		})
	}
}
