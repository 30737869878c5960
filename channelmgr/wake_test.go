package channelmgr

import (
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// A gone node's channels move when its fence wait ends, not at the next
// check-interval tick: with a check interval of an hour, advancing the
// clock to the end of the wait is all it takes. Not a moment earlier
// either: one nanosecond before, nothing has moved.
func TestGoneNodeChannelsMoveWhenTheWaitEnds(t *testing.T) {
	h := newHarness(t)
	ns := h.addNodes(2)
	core, logs := observer.New(zapcore.InfoLevel)
	h.lead(WithCheckInterval(time.Hour), WithLogger(zap.New(core)))
	chs := names("ch", 10)
	h.register(1, chs...)
	h.eventually("all watched", func() bool { return h.allWatched(chs) })
	dead := ns[0]
	held := h.counts()[dead.id]
	if held == 0 {
		t.Fatal("node 0 got no channels")
	}

	// The node dies and its lease is revoked (etcdctl lease revoke): the
	// coordinator learns at once that the lease is gone.
	dead.crash()
	if err := h.kv.Revoke(h.ctx, dead.lease); err != nil {
		t.Fatal(err)
	}
	h.eventually("the coordinator learns the lease is gone", func() bool {
		for _, e := range logs.FilterMessageSnippet("lease is gone").All() {
			if e.ContextMap()["node"] == dead.id {
				return true
			}
		}
		return false
	})
	// The survivor keeps its lease; nothing else moves the clock but us.
	ns[1].keepAlive()
	h.clk.Advance(nodeTTL - time.Nanosecond)
	// A new channel makes a pass at this time (the clock alone does not:
	// nothing is due yet); it lands on the survivor.
	h.register(1, "extra")
	h.eventually("a pass just before the wait ends", func() bool { return h.allWatched([]string{"extra"}, ns[1].id) })
	if got := h.counts()[dead.id]; got != held {
		t.Fatalf("%d channels moved before the node TTL ended\n%s", held-got, h.dump())
	}
	ns[1].keepAlive()
	h.clk.Advance(time.Nanosecond)
	h.eventually("all watched on the survivor, with no tick", func() bool { return h.allWatched(chs, ns[1].id) })
}
