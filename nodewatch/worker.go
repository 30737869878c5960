package nodewatch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"go.uber.org/zap"
)

type evKind int

const (
	evPut      evKind = iota + 1
	evDelete          // the key was deleted (or vanished across a compaction)
	evShutdown        // the incarnation ends: release, write nothing
)

type event struct {
	kind evKind
	rev  int64
	info meta.ChannelInfo // evPut
}

// cancels reports whether e ends a running assignment: the node never
// writes these, so they always come from the coordinator (or the end).
func (e event) cancels() bool {
	return e.kind != evPut || e.info.State == meta.ToRelease
}

// channel is one channel's state on this incarnation. Fields are guarded
// by incarnation.mu; seen and held are written only by the channel's single
// active worker.
type channel struct {
	name string
	key  string

	queue   []event
	active  bool               // a worker goroutine is draining queue
	present bool               // the key exists under the prefix (dispatcher's view)
	cancel  context.CancelFunc // ends the current assignment's ctx; nil when none
	watched bool               // Watch succeeded and was acked; not yet released
	held    bool               // Watch was called and Release has not succeeded
	seen    int64              // the key's newest mod revision handled or written
	info    meta.ChannelInfo   // what the last Watch got (for Release's Assignment)
	hasInfo bool
	phase   string // "watching" or "releasing" while that call (and its ack) runs; else ""
}

// enqueue hands e to the channel's worker, starting one if needed. It
// never blocks. An event that ends the assignment cancels a running Watch
// at once rather than waiting its turn.
func (inc *incarnation) enqueue(name string, e event) {
	inc.mu.Lock()
	defer inc.mu.Unlock()
	c := inc.chans[name]
	if c == nil {
		// A channel whose Release failed in an earlier incarnation is still
		// held by the handler: Release it before any new Watch.
		c = &channel{name: name, key: meta.ChannelKey(inc.id, name), held: inc.n.unreleased(name)}
		inc.chans[name] = c
	}
	c.present = e.kind == evPut
	c.queue = append(c.queue, e)
	if e.cancels() && c.cancel != nil {
		c.cancel()
	}
	inc.startLocked(c)
}

func (inc *incarnation) startLocked(c *channel) {
	if c.active {
		return
	}
	c.active = true
	inc.wg.Add(1)
	go inc.work(c)
}

// work drains c's queue in order, then exits; a channel that is neither
// present nor held is forgotten.
func (inc *incarnation) work(c *channel) {
	defer inc.wg.Done()
	for {
		inc.mu.Lock()
		if len(c.queue) == 0 {
			c.active = false
			if !c.present && !c.held && inc.chans[c.name] == c {
				delete(inc.chans, c.name)
			}
			inc.mu.Unlock()
			return
		}
		e := c.queue[0]
		c.queue = c.queue[1:]
		inc.mu.Unlock()
		inc.handle(c, e)
	}
}

func (inc *incarnation) handle(c *channel, e event) {
	if e.kind == evShutdown {
		inc.releaseLocal(c, "node session ended", nil)
		return
	}
	if inc.ctx.Err() != nil {
		return // ending: only the shutdown event acts
	}
	if e.rev <= c.seen {
		return // duplicate, stale, or our own write coming back
	}
	c.seen = e.rev
	log := inc.log.With(zap.String("channel", c.name), zap.Int64("revision", e.rev))
	switch {
	case e.kind == evDelete:
		inc.releaseLocal(c, "assignment deleted", nil)
	case e.info.State == meta.ToWatch && e.info.AssignRevision != 0:
		// The coordinator writes ToWatch with no token; one with a token is
		// our own progress heartbeat coming back, never a new assignment.
		log.Debug("ignoring our own progress heartbeat")
	case e.info.State == meta.ToWatch:
		inc.watch(c, e, log)
	case e.info.State == meta.ToRelease:
		inc.release(c, e, log)
	default:
		// Watched, WatchFailure, Released, ReleaseFailure: answers, ours.
		log.Debug("ignoring answer state", zap.Stringer("state", e.info.State))
	}
}

// watch runs Handler.Watch for a ToWatch assignment and acknowledges it.
func (inc *incarnation) watch(c *channel, e event, log *zap.Logger) {
	// A preparation of the channel ends before anything else: Watch takes
	// it over, or, when no Watch follows, it is unprepared here.
	prepared := inc.handOver(c.name)
	if c.held {
		if err := inc.releaseLocal(c, "reassigned", nil); err != nil {
			// The handler still holds the channel from an earlier
			// assignment: a Watch now would break the Handler contract.
			// Report the failure; the coordinator places it elsewhere, and
			// the next assignment retries the Release first.
			log.Warn("not starting channel: its earlier Release failed again", zap.Error(err))
			if prepared {
				inc.unprepare(c.name, log)
			}
			ack := e.info
			ack.State, ack.FailedNode = meta.WatchFailure, inc.id
			ack.LastError = meta.TruncateError("an earlier Release of this channel failed and must succeed before it can be watched again: " + err.Error())
			ack.AssignRevision = e.rev
			inc.cas(c, e.rev, ack, log)
			return
		}
	}
	actx, cancel := context.WithCancel(inc.ctx)
	defer func() {
		// The assignment's ctx outlives this call when Watch succeeded; it
		// is cancelled by releaseLocal. Otherwise cancel it here.
		inc.mu.Lock()
		if c.cancel == nil {
			cancel()
		}
		inc.mu.Unlock()
	}()
	inc.mu.Lock()
	c.cancel, c.held = cancel, true
	for _, q := range c.queue {
		if q.cancels() { // arrived before we could be cancelled
			cancel()
		}
	}
	inc.mu.Unlock()

	info := e.info
	info.AssignRevision = e.rev
	last := e.rev
	if inc.stale(actx) {
		// Watch was not called: nothing to release.
		inc.mu.Lock()
		c.held, c.cancel = false, nil
		inc.mu.Unlock()
		log.Warn("not starting channel: the node's session is past its fence deadline (was this process paused?)")
		if prepared {
			inc.unprepare(c.name, log)
		}
		return
	}
	log.Debug("watching channel")
	inc.setPhase(c, "watching")
	defer inc.setPhase(c, "")
	hb := &heartbeat{c: c, info: &info, last: &last, lost: func() {
		log.Debug("assignment changed while watching; cancelling")
		inc.mu.Lock()
		if c.cancel != nil {
			c.cancel()
		}
		inc.mu.Unlock()
	}}
	err := inc.runWatch(actx, c, hb, log)
	if inc.ctx.Err() != nil {
		inc.releaseLocal(c, "node session ended", nil)
		return
	}
	ack := info
	if err == nil {
		ack.State, ack.LastError = meta.Watched, ""
	} else {
		log.Debug("watch failed", zap.Error(err))
		// Clean up first: the coordinator may move the channel as soon as
		// it reads WatchFailure.
		inc.releaseLocal(c, "watch failed", &heartbeat{c: c, info: &info, last: &last})
		ack = info
		ack.State, ack.LastError, ack.FailedNode = meta.WatchFailure, meta.TruncateError(err.Error()), inc.id
	}
	if !inc.cas(c, last, ack, log) {
		log.Debug("watch acknowledgement rejected: the coordinator moved on; releasing")
		inc.releaseLocal(c, "acknowledgement rejected", nil)
		return
	}
	if err == nil {
		inc.mu.Lock()
		c.watched = true
		inc.mu.Unlock()
	}
}

// stale reports whether the assignment must not start because the session
// is past its fence deadline. A process paused (SIGSTOP, a long GC pause)
// between reading a ToWatch and starting it wakes past the deadline, when
// its lease may be gone and the channel given to another node; starting
// then would run the channel under a stale token. Past the deadline the
// session is ending (its fence timer has fired, and the incarnation's end
// cancels actx), unless a keep-alive ack is being recorded at this
// instant: wait for one or the other, on the clock. (An assignment whose
// ctx was cancelled by a queued ToRelease still starts and is released, as
// the Handler contract says.)
func (inc *incarnation) stale(actx context.Context) bool {
	clock := inc.n.cfg.clock
	for {
		if !inc.sess.PastDeadline(clock.Now()) {
			return false
		}
		if actx.Err() != nil {
			return true
		}
		t := clock.NewTimer(time.Millisecond)
		select {
		case <-actx.Done():
		case <-t.Chan():
		}
		t.Stop()
	}
}

// runWatch calls Handler.Watch (see runCall). Its progress reports bump
// Progress on the ToWatch key; a failed compare means the coordinator
// rewrote the key, and the assignment's ctx is cancelled.
func (inc *incarnation) runWatch(actx context.Context, c *channel, hb *heartbeat, log *zap.Logger) error {
	arg := *hb.info
	inc.mu.Lock()
	cancel := c.cancel
	inc.mu.Unlock()
	if cancel == nil {
		cancel = func() {}
	}
	inc.mu.Lock()
	c.info, c.hasInfo = arg, true
	inc.mu.Unlock()
	actx = context.WithValue(actx, callKey{}, callInfo{node: inc.id, info: arg, known: true})
	return inc.runCall(actx, cancel, "Watch", c.name, func(ctx context.Context) error {
		return inc.n.h.Watch(ctx, arg)
	}, hb, log)
}

// release answers a ToRelease.
func (inc *incarnation) release(c *channel, e event, log *zap.Logger) {
	info, last := e.info, e.rev
	err := inc.releaseLocal(c, whyAsked, &heartbeat{c: c, info: &info, last: &last})
	ack := info
	if err == nil {
		// LastError stays: it is why the channel is being released (a
		// failure the coordinator waits out its backoff for); only a
		// successful Watched clears it.
		ack.State = meta.Released
	} else {
		ack.State, ack.LastError = meta.ReleaseFailure, meta.TruncateError(err.Error())
	}
	if !inc.cas(c, last, ack, log) {
		log.Debug("release acknowledgement rejected: the coordinator moved on")
	}
}

// whyAsked is releaseLocal's why for a ToRelease: its outcome is
// reported (Released, ReleaseFailure) and logged then.
const whyAsked = "coordinator asked"

// releaseLocal ends the current assignment: cancel its ctx, then Release
// if Watch was called and Release has not succeeded since. It writes
// nothing but the Release's progress heartbeats, to hb's key (nil: none).
func (inc *incarnation) releaseLocal(c *channel, why string, hb *heartbeat) error {
	inc.mu.Lock()
	cancel, held := c.cancel, c.held
	c.cancel = nil
	inc.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	if !held {
		return nil
	}
	inc.mu.Lock()
	ci := callInfo{node: inc.id, info: c.info, known: c.hasInfo}
	inc.mu.Unlock()
	rctx, rcancel := context.WithCancel(context.WithValue(inc.relCtx, callKey{}, ci))
	defer rcancel()
	prev := inc.setPhase(c, "releasing")
	err := inc.runCall(rctx, rcancel, "Release", c.name, func(ctx context.Context) error {
		return inc.n.h.Release(ctx, c.name)
	}, hb, inc.log.With(zap.String("channel", c.name)))
	inc.mu.Lock()
	c.watched = false
	c.held = err != nil // a failed Release is retried before the next Watch
	c.phase = prev
	inc.mu.Unlock()
	inc.n.setUnreleased(c.name, err != nil) // ... of this incarnation or a later one
	switch {
	case err != nil && why != whyAsked:
		// Not reported as ReleaseFailure: this line is the only trace.
		inc.log.Warn("release failed", zap.String("channel", c.name), zap.String("why", why), zap.Error(err))
	case err != nil:
		inc.log.Debug("release failed", zap.String("channel", c.name), zap.String("why", why), zap.Error(err))
	default:
		inc.log.Debug("channel stopped", zap.String("channel", c.name), zap.String("why", why))
	}
	return err
}

// setPhase sets c's phase and returns the previous one.
func (inc *incarnation) setPhase(c *channel, phase string) string {
	inc.mu.Lock()
	defer inc.mu.Unlock()
	prev := c.phase
	c.phase = phase
	return prev
}

// cas writes info to c's key if its mod revision is still last, retrying
// transient errors with backoff until the incarnation ends. It reports
// whether the value is in place; false means the coordinator moved on (or
// the node's session ended).
func (inc *incarnation) cas(c *channel, last int64, info meta.ChannelInfo, log *zap.Logger) bool {
	var retry backoff
	ambiguous := false
	for {
		ok, rev, cur, err := inc.casRead(inc.ctx, c.key, last, info)
		switch {
		case err == nil && ok:
			c.seen = max(c.seen, rev)
			reported(log, info)
			return true
		case err == nil:
			// An earlier attempt whose outcome was unknown may have landed.
			if ambiguous && cur != nil {
				if val, _ := encodeFor(c.key, info); bytes.Equal(cur.Value, val) {
					c.seen = max(c.seen, cur.ModRevision)
					reported(log, info)
					return true
				}
			}
			return false
		case inc.ctx.Err() != nil:
			return false
		case errors.Is(err, meta.ErrInvalidChannel), errors.Is(err, meta.ErrCorruptValue):
			log.Error("cannot encode acknowledgement", zap.Error(err))
			return false
		case errors.Is(err, kv.ErrTxnTooLarge) && info.LastError != "" && info.LastError != errTextDropped:
			// Never resent as it is: drop the error text, the one part
			// of the value the node chose.
			log.Error("acknowledgement too large for the store; retrying without the error text",
				zap.Int("last_error_bytes", len(info.LastError)), zap.Error(err))
			info.LastError = errTextDropped
			continue
		case errors.Is(err, kv.ErrTxnTooLarge):
			log.Error("acknowledgement too large for the store; giving up (the coordinator times the assignment out)", zap.Error(err))
			return false
		}
		ambiguous = ambiguous || errors.Is(err, kv.ErrUnknownOutcome)
		d := retry.next()
		log.Info("acknowledgement failed; retrying", zap.Duration("after", d), zap.Error(err))
		if sleep(inc.ctx, inc.n.cfg.clock, d) != nil {
			return false
		}
	}
}

// reported logs, at info, the one line of a state change the node
// reported (every other per-channel line is at debug).
func reported(log *zap.Logger, info meta.ChannelInfo) {
	msg := map[meta.State]string{
		meta.Watched:        "channel watched",
		meta.WatchFailure:   "channel watch failed",
		meta.Released:       "channel released",
		meta.ReleaseFailure: "channel release failed",
		meta.Prepared:       "channel prepared",
		meta.PrepareFailure: "channel prepare failed",
	}[info.State]
	if msg == "" {
		msg = "channel state reported"
	}
	fields := []zap.Field{zap.Stringer("state", info.State), zap.Int64("assign_revision", info.AssignRevision)}
	if info.State == meta.WatchFailure || info.State == meta.ReleaseFailure || info.State == meta.PrepareFailure {
		fields = append(fields, zap.String("last_error", info.LastError))
	}
	log.Info(msg, fields...)
}

// errTextDropped replaces a LastError whose acknowledgement the store
// refused as too large.
const errTextDropped = "[error text dropped: the acknowledgement was too large for the store]"

func (inc *incarnation) casOnce(ctx context.Context, key string, last int64, info meta.ChannelInfo) (bool, int64, error) {
	ok, rev, _, err := inc.casRead(ctx, key, last, info)
	return ok, rev, err
}

// casRead is one If(ModRevision(key)==last) Then(Put) Else(Get), sent
// through the incarnation's acker (perhaps in one txn with other keys'). An
// unknown outcome (kv.ErrUnknownOutcome) is resolved by reading the key
// back until ctx ends: our value in place means the write landed (at the
// key's mod revision, which the caller records as seen, so that the event
// of our own write is not taken for the coordinator's); the key still at
// last means it did not land yet, and the txn is sent again (refused then
// over our own value, the earlier attempt landed late: applied); anything
// else means the coordinator moved on. Every value a node writes differs from
// the one it replaces (a new state, or a higher Progress), so a byte-equal
// value is ours.
func (inc *incarnation) casRead(ctx context.Context, key string, last int64, info meta.ChannelInfo) (bool, int64, *kv.KeyValue, error) {
	val, err := encodeFor(key, info)
	if err != nil {
		return false, 0, nil, err
	}
	alone, unknown := false, false
	for {
		res := inc.acks.cas(ctx, key, last, val, alone)
		err := res.err
		if errors.Is(err, kv.ErrUnknownOutcome) {
			unknown = true
			cur, rerr := inc.readBack(ctx, key)
			switch {
			case rerr != nil:
				return false, 0, nil, fmt.Errorf("%w (and reading it back failed: %w)", err, rerr)
			case cur == nil:
				return false, 0, nil, nil // deleted: the coordinator moved on
			case bytes.Equal(cur.Value, val):
				return true, cur.ModRevision, nil, nil
			case cur.ModRevision == last && errors.Is(err, kv.ErrTxnTooLarge) && alone:
				// Not applied, and too large even alone: the caller
				// decides (cas drops the error text, or gives up).
				return false, 0, nil, fmt.Errorf("%w (not applied)", kv.ErrTxnTooLarge)
			case cur.ModRevision == last:
				// Not applied: send it again, alone if its batch was too
				// large.
				alone = alone || errors.Is(err, kv.ErrTxnTooLarge)
				continue
			}
			return false, cur.ModRevision, cur, nil
		}
		if err != nil {
			return false, 0, nil, err
		}
		if !res.ok && unknown && res.cur != nil && bytes.Equal(res.cur.Value, val) {
			// Refused over our own value: the attempt whose outcome was
			// unknown landed after we read the key back (a request can
			// still apply after its client gave up on it).
			return true, res.cur.ModRevision, nil, nil
		}
		return res.ok, res.rev, res.cur, nil
	}
}

// readBack reads key (nil when missing), retrying with backoff until ctx
// ends.
func (inc *incarnation) readBack(ctx context.Context, key string) (*kv.KeyValue, error) {
	var retry backoff
	for {
		cur, _, err := inc.n.b.Get(ctx, key)
		switch {
		case err == nil:
			return &cur, nil
		case errors.Is(err, kv.ErrKeyNotFound):
			return nil, nil
		case errors.Is(err, kv.ErrClosed):
			return nil, err
		}
		if serr := sleep(ctx, inc.n.cfg.clock, retry.next()); serr != nil {
			return nil, fmt.Errorf("%w (last error: %w)", serr, err)
		}
	}
}

// call runs a Handler method, turning a panic into an error (logged with
// its stack; the error itself stays short, as it lands in LastError).
func (inc *incarnation) call(what, channel string, f func() error) error {
	return callHandler(inc.log, what, channel, f)
}

func callHandler(log *zap.Logger, what, channel string, f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			log.Error("handler panicked", zap.String("method", what), zap.String("channel", channel),
				zap.Any("panic", r), zap.ByteString("stack", debug.Stack()))
			err = fmt.Errorf("nodewatch: %s(%q) panicked: %v", what, channel, r)
		}
	}()
	return f()
}
