package bench

import (
	"context"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/meta"
)

// TestRecorderGapsAndOverlap feeds the recording handler calls of known
// timing and checks the gaps, the parts and the overlap it derives.
func TestRecorderGapsAndOverlap(t *testing.T) {
	rc := newRecorder()
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	add := func(ch string, node int, start, watched, stop int) {
		r := &run{node: node, start: at(start), watched: at(watched)}
		if stop >= 0 {
			r.stop = at(stop)
		}
		rc.runs[ch] = append(rc.runs[ch], r)
	}
	// a: node 0 until 10, node 1 from 12 (Watch returned at 15): gap 5 ms.
	add("a", 0, 0, 1, 10)
	add("a", 1, 12, 15, -1)
	rc.seen["a"] = []seen{{meta.Released, at(11)}, {meta.ToWatch, at(13)}}
	// b: moved twice, gaps 2 and 4 ms.
	add("b", 0, 0, 1, 5)
	add("b", 1, 6, 7, 20)
	add("b", 2, 22, 24, -1)
	h := rc.since(t0)
	if err := h.check([]string{"a", "b"}); err != nil {
		t.Fatalf("check: %v", err)
	}
	if h.moves != 3 || quantile(h.gaps, 1) != 5*time.Millisecond || quantile(h.gaps, 0) != 2*time.Millisecond {
		t.Fatalf("moves %d, gaps %v; want 3 moves, 2..5 ms", h.moves, h.gaps)
	}
	if h.perChan["b"] != 6*time.Millisecond {
		t.Fatalf("b's total gap %v, want 6ms", h.perChan["b"])
	}
	if len(h.ack) != 1 || h.ack[0] != time.Millisecond || h.coord[0] != 2*time.Millisecond || h.start[0] != 2*time.Millisecond {
		t.Fatalf("parts ack %v coord %v start %v; want 1, 2, 2 ms", h.ack, h.coord, h.start)
	}
	// Moves that began before the measurement are not counted.
	if h := rc.since(at(7)); h.moves != 2 {
		t.Fatalf("moves since 7 ms: %d, want 2", h.moves)
	}

	// c ran on node 1 from 9, before node 0's Release returned at 10: an
	// overlap, which check reports however short.
	add("c", 0, 0, 1, 10)
	add("c", 1, 9, 11, -1)
	if err := rc.since(t0).check([]string{"a", "b", "c"}); err == nil {
		t.Fatal("check passed with an overlap")
	}
	// d never released on node 0 while node 1 runs it: an overlap too.
	rc2 := newRecorder()
	rc2.runs["d"] = []*run{{node: 0, start: at(0), watched: at(1)}, {node: 1, start: at(5), watched: at(6)}}
	if h := rc2.since(t0); h.overlap != 1 || h.check([]string{"d"}) == nil {
		t.Fatalf("overlap %d, check passed: want an overlap", h.overlap)
	}
	// A registered channel that runs nowhere is lost.
	rc3 := newRecorder()
	rc3.runs["e"] = []*run{{node: 0, start: at(0), watched: at(1), stop: at(2)}}
	if err := rc3.since(t0).check([]string{"e", "f"}); err == nil {
		t.Fatal("check passed with lost channels")
	}
}

// TestRecordingHandler checks that the handler records Watch and Release
// per node, and that a Release closes only its own node's run.
func TestRecordingHandler(t *testing.T) {
	rc := newRecorder()
	ctx := context.Background()
	h0, h1 := rc.handler(0), rc.handler(1)
	if err := h0.Watch(ctx, meta.ChannelInfo{Name: "x"}); err != nil {
		t.Fatal(err)
	}
	if err := h1.Release(ctx, "x"); err != nil { // not node 1's
		t.Fatal(err)
	}
	if h := rc.since(time.Time{}); h.running["x"] != 1 {
		t.Fatalf("running %v after another node's Release, want x once", h.running)
	}
	if err := h0.Release(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	if err := h1.Watch(ctx, meta.ChannelInfo{Name: "x"}); err != nil {
		t.Fatal(err)
	}
	h := rc.since(time.Time{})
	if h.overlap != 0 || h.moves != 1 || h.running["x"] != 1 {
		t.Fatalf("overlap %d, moves %d, running %v; want 0, 1, x once", h.overlap, h.moves, h.running)
	}
}
