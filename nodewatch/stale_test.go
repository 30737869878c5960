package nodewatch

import (
	"context"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/chanwatch/chanwatch/kv/memkv"
	"github.com/chanwatch/chanwatch/session"
)

// TestStaleAssignmentNotStarted: an assignment reached after the session's
// fence deadline (a process that slept through it) must not start; before
// the deadline it starts.
func TestStaleAssignmentNotStarted(t *testing.T) {
	clk := clockwork.NewFakeClock()
	store := memkv.New(memkv.WithClock(clk))
	defer store.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const ttl = 10 * time.Second
	sess, err := session.New(ctx, store.NewClient(), session.WithTTL(ttl), session.WithClock(clk))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Abandon()
	inc := &incarnation{n: &Node{cfg: config{clock: clk}}, sess: sess}

	// The incarnation's ctx ends with the session, as serve does it.
	actx, end := context.WithCancel(ctx)
	defer end()
	go func() {
		select {
		case <-sess.Done():
			end()
		case <-actx.Done():
		}
	}()
	if inc.stale(actx) {
		t.Fatal("a fresh session's assignment is stale")
	}

	// The process sleeps through its fence deadline: the clock jumps and
	// the keep-alives it would have sent never went out.
	store.Hang()
	clk.Advance(ttl)
	done := make(chan bool, 1)
	go func() { done <- inc.stale(actx) }()
	select {
	case stale := <-done:
		if !stale {
			t.Fatal("an assignment reached past the fence deadline was started")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("stale did not return")
	}
	select {
	case <-sess.Done():
	default:
		t.Fatal("stale returned true while the session still lives")
	}
}
