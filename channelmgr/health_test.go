package channelmgr

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
)

// toWatchOn counts the ToWatch puts (new attempts) on node id's prefix in
// revisions (from, now].
func (h *harness) toWatchOn(id, from int64) int {
	h.t.Helper()
	// Watch the whole root, so that the store's last revision arrives.
	to := h.rev()
	n := 0
	for _, ev := range h.events("", from, to) {
		if ev.Type != kv.EventPut || !strings.HasPrefix(ev.KV.Key, meta.NodePrefix(id)) {
			continue
		}
		if info, err := meta.DecodeChannelInfo(ev.KV.Key, ev.KV.Value); err == nil && info.State == meta.ToWatch && info.Progress == 0 {
			n++
		}
	}
	return n
}

// A node that fails every Watch is quarantined after three failures: every
// channel settles on the healthy nodes, and over five minutes the node is
// only probed, one channel at a time, with backoff (10s, 20s, 40s, 80s, 80s).
func TestQuarantineFailingNode(t *testing.T) {
	h := newHarness(t)
	good := h.addNodes(4)
	c := h.lead(WithQuarantine(3, 10*time.Second, 80*time.Second))
	chs := names("q", 40)
	h.register(1, chs...)
	ids := []int64{good[0].id, good[1].id, good[2].id, good[3].id}
	h.eventually("channels on the healthy nodes", func() bool { return h.allWatched(chs, ids...) })
	bad := h.addNode()
	bad.set(func(n *fakeNode) { n.failAll = true })
	from := h.rev()
	settled := func() bool { return h.allWatched(chs, ids...) }
	for i := 0; i < 300; i++ {
		h.advance(step, c)
	}
	h.eventually("every channel Watched on a healthy node", settled)
	q, err := Quarantined(h.ctx, h.kv)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := q[bad.id]; !ok || got.Quarantines < 2 || got.Reason == "" {
		t.Fatalf("node %d not published as quarantined: %+v\n%s", bad.id, q, h.dump())
	}
	// Balance sends channels to the empty node at first (up to
	// MaxMovesInFlight, 8), then only probes: one per quarantine: five in 300s.
	n := h.toWatchOn(bad.id, from)
	t.Logf("channels sent to the failing node in 300s: %d; quarantines: %d", n, q[bad.id].Quarantines)
	if n > DefaultMaxMovesInFlight+6 {
		t.Fatalf("%d channels sent to the failing node in 300s, want at most %d\n%s", n, DefaultMaxMovesInFlight+6, h.dump())
	}
	// It recovers: the next probe succeeds, and it takes load again.
	bad.set(func(n *fakeNode) { n.failAll = false })
	for i := 0; i < 120; i++ {
		h.advance(step, c)
	}
	h.eventually("the recovered node takes load", func() bool {
		return h.allWatched(chs) && h.counts()[bad.id] >= 7
	})
	h.eventually("its quarantine key deleted", func() bool {
		q, err := Quarantined(h.ctx, h.kv)
		return err == nil && len(q) == 0
	})
}

// An operator lifts a quarantine by deleting its key: the node takes load
// at once (and is quarantined again if it keeps failing).
func TestUnquarantine(t *testing.T) {
	h := newHarness(t)
	good := h.addNodes(2)
	bad := h.addNode()
	bad.set(func(n *fakeNode) { n.failAll = true })
	c := h.lead(WithQuarantine(3, time.Hour, time.Hour))
	chs := names("u", 12)
	h.register(1, chs...)
	h.eventually("quarantine published", func() bool {
		q, err := Quarantined(h.ctx, h.kv)
		return err == nil && q[bad.id].Node == bad.id
	})
	for i := 0; i < 20; i++ {
		h.advance(step, c)
	}
	h.eventually("channels on the healthy nodes", func() bool { return h.allWatched(chs, good[0].id, good[1].id) })
	from := h.rev()
	for i := 0; i < 30; i++ {
		h.advance(step, c)
	}
	if n := h.toWatchOn(bad.id, from); n != 0 {
		t.Fatalf("%d channels sent to a node quarantined for an hour", n)
	}
	bad.set(func(n *fakeNode) { n.failAll = false })
	if err := Unquarantine(h.ctx, h.kv, bad.id); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 30; i++ {
		h.advance(step, c)
	}
	h.eventually("the lifted node takes load", func() bool { return h.allWatched(chs) && h.counts()[bad.id] >= 3 })
}

// One channel that fails everywhere does not quarantine any node: failures
// count distinct channels.
func TestPoisonedChannelQuarantinesNoNode(t *testing.T) {
	h := newHarness(t)
	ns := h.addNodes(3)
	for _, n := range ns {
		n.set(func(n *fakeNode) { n.failWatch["x"] = true })
	}
	c := h.lead(WithQuarantine(3, time.Hour, time.Hour))
	h.register(1, "x")
	for i := 0; i < 60; i++ {
		h.advance(step, c)
	}
	if a := h.assignment("x"); a.info.Attempts < 4 {
		t.Fatalf("x tried %d times, want at least 4", a.info.Attempts)
	}
	if q, err := Quarantined(h.ctx, h.kv); err != nil || len(q) != 0 {
		t.Fatalf("quarantined %v (%v), want none", q, err)
	}
}

func TestQuarantineWait(t *testing.T) {
	c := config{quarantineBase: 10 * time.Second, quarantineMax: time.Minute}
	var got []string
	for n := 1; n <= 5; n++ {
		got = append(got, c.quarantineWait(n).String())
	}
	if s := fmt.Sprint(got); s != "[10s 20s 40s 1m0s 1m0s]" {
		t.Fatalf("waits %s", s)
	}
}

// A node whose Watches never answer (they time out) is quarantined like one
// whose Watches fail: its channels settle on the healthy nodes.
func TestQuarantineTimingOutNode(t *testing.T) {
	h := newHarness(t)
	good := h.addNodes(4)
	bad := h.addNode()
	bad.set(func(n *fakeNode) { n.ignoreWat = true })
	c := h.lead(WithQuarantine(3, time.Minute, 4*time.Minute))
	chs := names("t", 40)
	h.register(1, chs...)
	ids := []int64{good[0].id, good[1].id, good[2].id, good[3].id}
	for i := 0; i < 60; i++ {
		h.advance(step, c)
	}
	h.eventually("every channel Watched on a healthy node", func() bool { return h.allWatched(chs, ids...) })
	q, err := Quarantined(h.ctx, h.kv)
	if err != nil || q[bad.id].Node != bad.id {
		t.Fatalf("timing-out node %d not quarantined: %+v, %v", bad.id, q, err)
	}
	from := h.rev()
	for i := 0; i < 60; i++ {
		h.advance(step, c)
	}
	if n := h.toWatchOn(bad.id, from); n > 1 {
		t.Fatalf("%d channels sent to the quarantined node within its first probe's wait, want at most 1", n)
	}
}
