package nodewatch

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/chanwatch/chanwatch/meta"
	"github.com/jonboulle/clockwork"
	"go.uber.org/zap"
)

// ReportProgress tells the node that the Handler call whose ctx this is
// (a Watch or a Release) has made progress: it is slow, not stuck. See
// Handler for what counts as progress. The node turns reports into Progress
// heartbeats on the channel's assignment key, which re-arm the
// coordinator's watch and release timeouts; it writes at most one
// heartbeat per progress interval however often the handler reports, and
// none when the handler has not reported since the last one.
//
// ReportProgress never blocks and is safe for concurrent use. It is a
// no-op on a ctx that did not come from the node, after the call returned,
// and after the call ran past the node's attempt cap (WithMaxAttempt).
func ReportProgress(ctx context.Context) {
	if p, _ := ctx.Value(progressKey{}).(*progress); p != nil {
		p.report()
	}
}

type progressKey struct{}

// NodeID returns the ID of the node whose Handler call (Watch or Release)
// ctx belongs to, or 0 on a ctx that did not come from a node. A node takes
// a new ID after each session loss, so the ID can differ between the Watch
// and the Release of one channel.
func NodeID(ctx context.Context) int64 {
	c, _ := ctx.Value(callKey{}).(callInfo)
	return c.node
}

// Assignment returns the assignment the Handler call whose ctx this is works
// on: for Watch, the ChannelInfo it was given (with its fencing token); for
// Release, the ChannelInfo of the Watch it undoes, so that final writes can
// be stamped with the same token. ok is false on a ctx that did not come
// from a node, and for a Release whose Watch ran in an earlier process (or
// whose earlier Release failed before the node re-registered: the node then
// retries it without the assignment).
func Assignment(ctx context.Context) (info meta.ChannelInfo, ok bool) {
	c, _ := ctx.Value(callKey{}).(callInfo)
	return c.info, c.known
}

type callKey struct{}

// callInfo is what NodeID and Assignment read.
type callInfo struct {
	node  int64
	info  meta.ChannelInfo
	known bool
}

// progress collects one Handler call's reports for its heartbeat loop.
type progress struct {
	mu     sync.Mutex
	closed bool
	signal chan struct{} // capacity 1: a report the loop has not taken yet
}

func newProgress() *progress { return &progress{signal: make(chan struct{}, 1)} }

func (p *progress) report() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	select {
	case p.signal <- struct{}{}:
	default: // one is pending already
	}
}

// close makes every later report a no-op.
func (p *progress) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
}

// heartbeat is where a call's progress goes: the channel's assignment key,
// at its last known value (info) and mod revision (last), which each
// heartbeat updates. The caller's acknowledgement compares on *last.
type heartbeat struct {
	c    *channel
	info *meta.ChannelInfo
	last *int64
	// lost is called when a heartbeat's compare fails: the coordinator
	// rewrote or deleted the key, and heartbeats stop. Nil: nothing to do.
	lost func()
	gone bool
}

// errAttemptCap is wrapped into the error of a call that ran past the
// attempt cap.
var errAttemptCap = errors.New("nodewatch: attempt cap reached")

// runCall runs one Handler call f on its own goroutine, with a progress
// reporter in its ctx, and waits for it. While f runs, each progress
// report becomes a Progress heartbeat on hb's key (nil hb: reports are
// dropped), at most one per progress interval, the first no sooner than
// one interval after the call started (the assignment's own write re-armed
// the coordinator's timer then). When the call runs past the attempt cap,
// cancel is called (f's ctx must be derived from what it cancels), later
// reports are ignored, and the error returned wraps errAttemptCap, even if
// f returns nil: what it started was told to stop.
func (inc *incarnation) runCall(ctx context.Context, cancel context.CancelFunc, what, name string,
	f func(ctx context.Context) error, hb *heartbeat, log *zap.Logger,
) error {
	p := newProgress()
	cctx := context.WithValue(ctx, progressKey{}, p)
	done := make(chan error, 1)
	go func() {
		done <- inc.call(what, name, func() error { return f(cctx) })
	}()
	cfg := &inc.n.cfg
	clock := cfg.clock
	start := clock.Now()
	lastWrite := start
	var (
		waitT   clockwork.Timer
		waitC   <-chan time.Time
		capC    <-chan time.Time
		pending bool
		capped  bool
	)
	if cfg.maxAttempt > 0 {
		capT := clock.NewTimer(cfg.maxAttempt)
		defer capT.Stop()
		capC = capT.Chan()
	}
	defer func() {
		if waitT != nil {
			waitT.Stop()
		}
	}()
	arm := func(d time.Duration) {
		if waitT == nil {
			waitT = clock.NewTimer(d)
		} else {
			waitT.Reset(d)
		}
		waitC = waitT.Chan()
	}
	for {
		select {
		case err := <-done:
			p.close()
			if capped {
				if err == nil {
					err = fmt.Errorf("%w: %s ran past %v (its ctx was cancelled then; the call returned nil late)", errAttemptCap, what, cfg.maxAttempt)
				} else {
					err = fmt.Errorf("%w: %s ran past %v and its ctx was cancelled: %w", errAttemptCap, what, cfg.maxAttempt, err)
				}
			}
			return err
		case <-p.signal:
			if hb == nil {
				continue
			}
			pending = true
			if waitC == nil {
				arm(max(lastWrite.Add(cfg.progress).Sub(clock.Now()), 0))
			}
		case <-waitC:
			waitC = nil
			if !pending {
				continue
			}
			pending = false
			lastWrite = clock.Now()
			inc.beat(hb, log)
		case <-capC:
			capC, capped, pending, waitC = nil, true, false, nil
			p.close()
			log.Warn("handler call ran past the attempt cap; cancelling it and ignoring its progress",
				zap.String("method", what), zap.Duration("cap", cfg.maxAttempt), zap.Duration("ran", clock.Now().Sub(start)))
			cancel()
		}
	}
}

// beat writes one Progress heartbeat: Progress+1 on hb's key if its mod
// revision is still *hb.last. A failed compare calls hb.lost.
func (inc *incarnation) beat(hb *heartbeat, log *zap.Logger) {
	if hb.gone || inc.ctx.Err() != nil {
		return
	}
	p := *hb.info
	p.Progress++
	switch ok, rev, err := inc.casOnce(inc.ctx, hb.c.key, *hb.last, p); {
	case err != nil:
		log.Info("progress heartbeat failed", zap.Error(err))
	case !ok:
		log.Debug("assignment changed while the handler ran; progress heartbeats stop")
		hb.gone = true
		if hb.lost != nil {
			hb.lost()
		}
	default:
		hb.info.Progress, *hb.last = p.Progress, rev
		hb.c.seen = max(hb.c.seen, rev)
		log.Debug("progress heartbeat", zap.Int64("progress", p.Progress), zap.Int64("revision", rev))
	}
}
