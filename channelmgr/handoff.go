package channelmgr

import (
	"context"
	"strings"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
)

// A planned move (drain, balance, a retry elsewhere) ends with the old
// node's Released answer; the channel runs nowhere until the coordinator
// writes its next ToWatch. A full pass walks every channel, so run folds
// events for up to maxFoldWindow before the next one, and an answer would
// wait that long. Instead, an answer is placed by a quick pass over just the
// channels that answered, one store round trip after it arrives, while the
// window goes on folding everything else: placement batching is unchanged.

// answered appends to out the registered channels that evs (just folded)
// show Released by a node.
func (r *reconciler) answered(evs []kv.Event, out []string) []string {
	for _, ev := range evs {
		if ev.Type != kv.EventPut || !strings.HasPrefix(ev.KV.Key, meta.ChannelPrefix) {
			continue
		}
		node, ch, err := meta.ParseChannelKey(ev.KV.Key)
		if err != nil || node == 0 || r.v.registry[ch] == nil {
			continue
		}
		if k := r.v.key(ch, ev.KV.Key); k != nil && !k.corrupt && k.info.State == meta.Released && k.modRev == ev.KV.ModRevision {
			out = append(out, ch)
		}
	}
	return out
}

// quickPass decides on chs alone, with the same rules as a full pass
// (decideChannel, placeAll: a channel leaves a node only once it is
// Released in the view, and every write carries the same compares), and
// writes the result. The policy sees the node loads of the last full pass
// plus the quick passes since (lastLoads): close enough to choose a node,
// and the next full pass counts afresh. It reports false, doing nothing,
// when those loads may be wrong: the serving nodes changed since, or a
// batch awaits a resend; the caller then runs a full pass at once. It
// returns the number of txns it sent.
func (r *reconciler) quickPass(ctx context.Context, chs []string) (bool, int, error) {
	if r.lastLoads == nil || len(r.retry) > 0 {
		return false, 0, nil
	}
	serving := r.servingNodes()
	if len(serving) != len(r.lastLoads) {
		return false, 0, nil
	}
	for _, id := range serving {
		if r.lastLoads[id] == nil {
			return false, 0, nil
		}
	}
	now := r.clock.Now()
	// decideChannel counts each channel's load into p.loads; those counts
	// are in lastLoads already, so it counts into a scratch map.
	p := &plan{byCh: map[string]*unit{}, loads: map[int64]*NodeLoad{}}
	seen := make(map[string]bool, len(chs))
	for _, ch := range chs {
		if !seen[ch] {
			seen[ch] = true
			r.decideChannel(p, ch, now)
		}
	}
	// Evictions need the full pass (it re-reads the key first); the
	// channel's own units still go now.
	p.loads = r.lastLoads
	r.placeAll(p, serving, now)
	n, err := r.sendAll(ctx, r.pack(p.units), now)
	if err != nil {
		return true, 0, err
	}
	r.c.m.quickPasses.Inc()
	return true, n, nil
}

// quickBatch is the number of answers that start a quick pass at once,
// without waiting to gather more: about one txn's worth of moves.
const quickBatch = 42

// gatherTimer is the real-clock timer of a quick pass's gathering (CPU and
// store latency, not protocol time: a fake clock must not stall it). C is
// nil while it is not armed.
type gatherTimer struct {
	t *time.Timer
	C <-chan time.Time
}

func (g *gatherTimer) Reset(d time.Duration) {
	g.Stop()
	g.t = time.NewTimer(d)
	g.C = g.t.C
}

func (g *gatherTimer) Stop() {
	if g.t != nil {
		g.t.Stop()
	}
	g.t, g.C = nil, nil
}

// gatherFor is how long answers are gathered before a quick pass: the
// store's last measured round trip, within [minGather, maxGather].
func (r *reconciler) gatherFor() time.Duration {
	return min(max(r.rtt, minGather), maxGather)
}

const (
	minGather = 500 * time.Microsecond
	maxGather = 10 * time.Millisecond
)

// gathered runs the quick pass on *answered and clears it. It reports false
// when the caller must end the fold window and run a full pass now (the
// quick pass could not run, see quickPass), and an error when the term
// must end.
func (r *reconciler) gathered(ctx context.Context, answered *[]string, quick *gatherTimer) (bool, error) {
	quick.Stop()
	start := time.Now()
	done, batches, err := r.quickPass(ctx, *answered)
	if err != nil || !done {
		return false, err
	}
	if batches > 0 {
		r.rtt = time.Since(start) / time.Duration(batches)
	}
	*answered = (*answered)[:0]
	return true, nil
}
