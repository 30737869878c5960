package nodewatch

import (
	"fmt"
	"math"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
)

// Measured load: the handler may report how much load each running channel
// puts on the node (Node.ReportLoad), in the unit of the channels'
// weights. The node publishes the figures in load/<nodeID> on its session
// lease, at most once per load interval, and only when a channel's figure
// moved by more than LoadHysteresis since the last write (or a running
// channel got its first figure), so that noise writes nothing and moves
// nothing. A weight-aware policy (channelmgr.Weighted) uses a channel's
// measured load in place of its weight. At the default interval a node
// writes at most 0.1 times a second, and nothing while its loads are
// steady.

// Defaults of measured load.
const (
	DefaultLoadInterval = 10 * time.Second
	// LoadHysteresis is the relative change of one channel's load that
	// makes the node rewrite its report.
	LoadHysteresis = 0.1
)

// WithLoadInterval sets the least time between two writes of the node's
// load report (default, and 0: DefaultLoadInterval; >= 0). It matters only
// for a handler that calls ReportLoad.
func WithLoadInterval(d time.Duration) Option { return func(c *config) { c.loadEvery = d } }

func (c *config) loadInterval() time.Duration {
	if c.loadEvery == 0 {
		return DefaultLoadInterval
	}
	return c.loadEvery
}

// loadState holds the figures ReportLoad was given, for every incarnation.
type loadState struct {
	mu    sync.Mutex
	loads map[string]float64
	once  sync.Once
	wake  chan struct{} // closed at the first report: reporters start their ticker
}

func (n *Node) loadState() *loadState {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.loads == nil {
		n.loads = &loadState{loads: map[string]float64{}, wake: make(chan struct{})}
	}
	return n.loads
}

// ReportLoad records the measured load of channel (finite, >= 0, at most
// meta.MaxWeight; in the unit of the channels' weights), for the node's
// next load report. Report a channel the node runs, as often as you like:
// the node writes at most once per load interval, and only a change of
// more than LoadHysteresis. Figures of channels the node no longer has are
// dropped. Errors: meta.ErrInvalidPlacement, meta.ErrInvalidChannel.
func (n *Node) ReportLoad(channel string, load float64) error {
	if err := meta.ValidateChannel(channel); err != nil {
		return fmt.Errorf("nodewatch: report load: %w", err)
	}
	if load != 0 {
		if err := meta.ValidateWeight(load); err != nil {
			return fmt.Errorf("nodewatch: report load of %s: %w", channel, err)
		}
	}
	ls := n.loadState()
	ls.mu.Lock()
	ls.loads[channel] = load
	ls.mu.Unlock()
	ls.once.Do(func() { close(ls.wake) })
	return nil
}

// reportLoads publishes the incarnation's load report until it ends. It
// does nothing (no timer) until the handler reports a first figure.
func (inc *incarnation) reportLoads() {
	defer inc.wg.Done()
	ls := inc.n.loadState()
	select {
	case <-inc.ctx.Done():
		return
	case <-ls.wake:
	}
	clock := inc.n.cfg.clock
	t := clock.NewTicker(inc.n.cfg.loadInterval())
	defer t.Stop()
	var last map[string]float64 // as written
	for {
		select {
		case <-inc.ctx.Done():
			return
		case <-t.Chan():
		}
		cur := inc.currentLoads(ls)
		if !loadsMoved(last, cur) {
			continue
		}
		val, err := meta.EncodeLoadReport(meta.LoadReport{Node: inc.id, Time: clock.Now(), Loads: cur})
		if err != nil {
			inc.log.Error("cannot encode the load report", zap.Error(err))
			continue
		}
		key := meta.LoadKey(inc.id)
		if _, err := inc.n.b.Txn(inc.ctx, kv.Txn{Then: []kv.Op{kv.OpPutLease(key, val, inc.sess.Lease())}}); err != nil {
			inc.log.Info("load report not written; next interval", zap.Error(err))
			continue // an unknown outcome is rewritten next time: last is unchanged
		}
		last = cur
		inc.log.Debug("load report written", zap.Int("channels", len(cur)))
	}
}

// currentLoads returns the reported loads of the channels the incarnation
// runs, and forgets the figures of channels it does not have at all.
func (inc *incarnation) currentLoads(ls *loadState) map[string]float64 {
	inc.mu.Lock()
	running := make(map[string]bool, len(inc.chans))
	for name, c := range inc.chans {
		running[name] = c.watched
	}
	inc.mu.Unlock()
	ls.mu.Lock()
	defer ls.mu.Unlock()
	cur := map[string]float64{}
	for ch, l := range ls.loads {
		w, known := running[ch]
		switch {
		case !known:
			delete(ls.loads, ch)
		case w:
			cur[ch] = l
		}
	}
	return cur
}

// loadsMoved reports whether cur differs from last enough to be written:
// a channel's first figure, or one that moved by more than LoadHysteresis
// of the larger of the two. A channel that left is not worth a write (the
// coordinator reads a node's figure only for a channel on that node).
func loadsMoved(last, cur map[string]float64) bool {
	for ch, c := range cur {
		p, ok := last[ch]
		if !ok || math.Abs(c-p) > LoadHysteresis*math.Max(c, p) {
			return true
		}
	}
	return false
}
