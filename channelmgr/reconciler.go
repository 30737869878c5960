package channelmgr

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/jonboulle/clockwork"
	"go.uber.org/zap"
)

// reconciler is one leadership term's decision loop. Everything in it is
// owned by the goroutine running run: no locks.
type reconciler struct {
	// outer is the context of the whole Run: a txn in flight when the
	// term ends still waits for its answer under it (see exec).
	outer context.Context

	c     *Coordinator
	cfg   *config
	b     kv.Backend
	l     leader
	log   *zap.Logger
	clock clockwork.Clock
	start time.Time // when this term began: the reference of the takeover wait
	// noSettled turns decideChannel's fast path for settled channels off
	// (tests compare the two).
	noSettled bool

	v       view
	watchOK bool // false while the watch is down: the view may be stale
	// staleSince is when the watch went down (zero while it runs): the
	// outage credited to the deadlines when it runs again (see viewFresh).
	staleSince time.Time
	chans      map[string]*chanRT
	nodes      map[int64]*nodeRT
	badSeen    map[string]int64
	timers     map[string]timer // by assignment key
	retry      []*batch         // batches whose outcome is unknown, to resend as they are
	lastDecide time.Duration    // how long the last pass's walk (decide) took: the fold window
	wake       time.Time        // when the last pass's earliest put-off decision is due (zero: none)
	refused    int              // > 0: pack keeps txns at or below it: the backend refused one of refused+1 bytes (see exec)
	// health is each node's record of failures (see health.go); byAddr
	// carries a release quarantine over to a node's next session.
	health map[int64]*nodeHealth
	byAddr map[string]*nodeHealth
	// maxTTL is the largest node TTL this term knows of: WithNodeTTL, or a
	// larger one a node advertised (see nodeTTL).
	maxTTL time.Duration
	// lastLoads is the serving nodes' loads as the last full pass counted
	// them, plus the placements of quick passes since (see quickPass).
	lastLoads map[int64]*NodeLoad
	// rtt is the store's round trip as the last quick pass measured it.
	rtt time.Duration
	// moveStarts is when the planned moves of the budget's window started;
	// lastQueued the moves the budget held back in the last pass.
	moveStarts []time.Time
	lastQueued int
}

// chanRT is what the leader keeps in memory about a channel. None of it is
// needed for safety; all of it is rebuilt conservatively by a new leader.
type chanRT struct {
	// Do not decide on the channel until the view reaches pendingRev (our
	// write is visible) or the clock reaches pendingUntil (zero: no bound).
	pendingRev   int64
	pendingUntil time.Time
	uncertain    bool // in a batch awaiting an identical resend
	solo         bool // its last batch failed a compare: next write alone
	// target is the node a balance move takes the channel to.
	target int64
	// placedOn is the node of our last placement while it is pending.
	placedOn int64
	// notBefore delays re-placement after a failure (backoff), armed for
	// the Released key at backoffRev.
	backoffRev int64
	notBefore  time.Time
	// heldRev avoids logging the same stuck key every pass.
	heldRev int64
	// tooLargeRev is the channel revision at which pack last logged that
	// the channel's writes do not fit in a txn.
	tooLargeRev int64
	// failAttempts and failNode are the failed attempt last counted
	// against a node's health; releaseFailRev the ReleaseFailure key.
	failAttempts   int
	failNode       int64
	watchFailRev   int64
	releaseFailRev int64
	// move is the planned move in flight (see budget.go).
	move moveState
	// prepFails counts the channel's failed or timed-out preparations in
	// a row, and prepNotBefore is when a balance move may try another
	// (see prepare.go).
	prepFails     int
	prepNotBefore time.Time
}

func newReconciler(c *Coordinator, l leader) *reconciler {
	return &reconciler{
		c:       c,
		cfg:     &c.cfg,
		b:       c.b,
		l:       l,
		log:     c.log.With(zap.Int64("token", l.Token())),
		clock:   c.cfg.clock,
		start:   c.cfg.clock.Now(),
		v:       newView(),
		chans:   map[string]*chanRT{},
		nodes:   map[int64]*nodeRT{},
		badSeen: map[string]int64{},
		timers:  map[string]timer{},
		health:  map[int64]*nodeHealth{},
		byAddr:  map[string]*nodeHealth{},
	}
}

func (r *reconciler) ch(name string) *chanRT {
	rt := r.chans[name]
	if rt == nil {
		rt = &chanRT{}
		r.chans[name] = rt
	}
	return rt
}

// errDeposed: a guarded txn failed because another coordinator leads.
var errDeposed = errors.New("channelmgr: deposed (leader guard failed)")

// run lists the root, watches it, and reconciles on every batch of events
// and every tick until ctx ends or a write shows we no longer lead.
func (r *reconciler) run(ctx context.Context) error {
	if err := r.relist(ctx); err != nil {
		return err
	}
	ticker := r.clock.NewTicker(r.cfg.checkInterval)
	defer ticker.Stop()
	wch, wcancel := r.watch(ctx)
	defer func() { wcancel() }()
	var rewatch <-chan time.Time
	failures := 0
	var wake clockwork.Timer
	defer func() {
		if wake != nil {
			wake.Stop()
		}
	}()
	for {
		if err := r.pass(ctx); err != nil {
			return err
		}
		// A decision put off until a known time (a gone node's fence, a
		// backoff, a timeout) gets a pass of its own when it is due.
		var wakeC <-chan time.Time
		if wake != nil {
			wake.Stop()
			wake = nil
		}
		if !r.wake.IsZero() {
			wake = r.clock.NewTimer(r.wake.Sub(r.clock.Now()))
			wakeC = wake.Chan()
		}
		// Watch responses already delivered come before a tick or a
		// wake-up: a pass must decide on the freshest view it can have
		// without waiting (see catching up below).
		var resp kv.WatchResponse
		got, ok := false, false
		select {
		case resp, ok = <-wch:
			got = true
		default:
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-wakeC:
			case <-ticker.Chan():
			case <-rewatch:
				rewatch = nil
				wch, wcancel = r.watch(ctx)
			case resp, ok = <-wch:
				got = true
			}
		}
		if got {
			// A pass walks every channel, so deciding after each small
			// response would let a busy watch (thousands of acks) outrun
			// the coordinator: keep folding for as long as the last pass's
			// walk took (capped), then decide once on the whole burst. The
			// window is the walk's CPU time, not the time its writes took
			// (waiting on the store costs no CPU, and folding that long
			// after a pass of 7,000 placements only delayed the next), nor
			// protocol time, so it runs on the real clock: a fake clock
			// must not be able to stall it.
			var window <-chan time.Time
			var windowTimer *time.Timer
			var answered []string // see quickPass
			var quick gatherTimer
			var catchUp time.Time // when catching up began
			var idle *time.Timer
			if w := min(r.lastDecide, maxFoldWindow); w > 0 {
				windowTimer = time.NewTimer(w)
				window = windowTimer.C
			}
		drain:
			for {
				if !ok || resp.Err != nil {
					wcancel()
					wch = nil
					r.viewStale(r.clock.Now())
					if ctx.Err() != nil {
						return ctx.Err()
					}
					if errors.Is(resp.Err, kv.ErrClosed) {
						return fmt.Errorf("channelmgr: watch: %w", resp.Err)
					}
					if errors.Is(resp.Err, kv.ErrCompacted) {
						r.log.Warn("watch compacted, re-listing", zap.Int64("revision", r.v.rev), zap.Error(resp.Err))
						if err := r.relist(ctx); err != nil {
							return err
						}
					} else {
						r.log.Warn("watch broken, resuming", zap.Int64("revision", r.v.rev), zap.Error(resp.Err))
					}
					// Resume at once the first time; after repeated
					// failures, on the next check interval.
					failures++
					d := time.Duration(0)
					if failures > 1 {
						d = r.cfg.checkInterval
					}
					rewatch = r.clock.After(d)
					break drain
				}
				failures = 0
				r.fold(resp.Events)
				if window != nil {
					// Released answers are placed by a quick pass, after
					// gathering others for about one store round trip.
					if answered = r.answered(resp.Events, answered); len(answered) >= quickBatch {
						if more, err := r.gathered(ctx, &answered, &quick); err != nil {
							return err
						} else if !more {
							break drain
						}
					} else if len(answered) > 0 && quick.C == nil {
						quick.Reset(r.gatherFor())
					}
				}
				// Take whatever else arrives within the window before
				// deciding: one pass for a burst of events.
				got = false
				for !got && window != nil {
					select {
					case resp, ok = <-wch:
						got = true
					case <-quick.C:
						quick.C = nil
						if more, err := r.gathered(ctx, &answered, &quick); err != nil {
							return err
						} else if !more {
							break drain
						}
					case <-window:
						window = nil
					case <-ticker.Chan():
						window = nil // time moved on: check timeouts now
					case <-ctx.Done():
						return ctx.Err()
					}
				}
				if got {
					continue
				}
				// Catching up: then fold what the watch has already
				// delivered, however much, and decide on that. The window
				// bounds the wait for new events, not the folding of a
				// backlog: a pass on a view that lags decides on answers it
				// has not read (a timeout for a channel long Watched, a
				// compare bound to fail), and when passes take seconds (a
				// million channels) and only a window's worth of the
				// backlog were folded between them, the lag grew without
				// bound and placement stopped (B12). A response counts as
				// delivered when it comes within catchUpIdle of the last;
				// maxCatchUp bounds the whole, should events ever arrive
				// faster than they fold.
				if catchUp.IsZero() {
					catchUp = time.Now()
				}
				if time.Since(catchUp) > maxCatchUp {
					break drain
				}
				select {
				case resp, ok = <-wch:
					continue // delivered already
				default:
				}
				if idle == nil {
					idle = time.NewTimer(catchUpIdle)
				} else {
					idle.Reset(catchUpIdle)
				}
				select {
				case resp, ok = <-wch:
				case <-idle.C:
					break drain
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			quick.Stop()
			if windowTimer != nil {
				windowTimer.Stop()
			}
			if idle != nil {
				idle.Stop()
			}
		}
	}
}

// catchUpIdle is how long after the last watch response the coordinator
// takes the watch to have delivered its backlog (see run); maxCatchUp caps
// the folding of a backlog before a pass, in real time.
const (
	catchUpIdle = time.Millisecond
	maxCatchUp  = 2 * time.Second
)

// maxFoldWindow caps how long the coordinator keeps folding watch events
// before its next pass (see run): the delay it adds to any decision.
const maxFoldWindow = 200 * time.Millisecond

// watch watches the whole root from just after the view's revision. The
// events the view missed come first, and a deadline that fires before they
// are folded is checked against the store before anything is done (evict
// reads the key, release compares its mod revision).
func (r *reconciler) watch(ctx context.Context) (kv.WatchChan, context.CancelFunc) {
	wctx, cancel := context.WithCancel(ctx)
	r.viewFresh(r.clock.Now())
	return r.b.Watch(wctx, "", r.v.rev+1), cancel
}

// fold applies one watch response.
func (r *reconciler) fold(evs []kv.Event) {
	for _, ev := range evs {
		if rev := ev.Revision(); rev > r.v.rev {
			r.v.rev = rev
		}
		r.apply(ev)
	}
}

// listView replaces the view with a new one folded from a List of the
// root, and returns how many keys it read. With a kv.Pager it folds each
// page while the next is read; on an error the view is incomplete, and
// the caller puts its old one back.
func (r *reconciler) listView(ctx context.Context) (int, error) {
	n := 0
	r.v = newView()
	_, err := kv.ListPages(ctx, r.b, "", func(page []kv.KeyValue, rev int64, restart bool) error {
		if restart || r.v.rev != rev {
			r.v, n = newView(), 0
			r.v.rev = rev
		}
		for _, e := range page {
			r.apply(kv.Event{Type: kv.EventPut, KV: e})
		}
		n += len(page)
		return nil
	})
	return n, err
}

// relist replaces the view with one List of the root, retrying on the
// check interval until it succeeds or ctx ends. Nodes that vanished
// meanwhile are handled as deletions. Deadlines are kept: they belong to a
// (key, mod revision), and a key the list shows unchanged has not answered.
func (r *reconciler) relist(ctx context.Context) error {
	for {
		old := r.v
		keys, err := r.listView(ctx)
		if err != nil {
			r.v = old
		} else {
			rev := r.v.rev
			if old.rev == 0 {
				// Our first view: take over what the last leader published.
				for id, q := range r.v.quarantine {
					if _, live := r.live(id); live && !q.corrupt {
						r.adopt(id, q.q)
					}
				}
			}
			for id := range old.quarantine {
				if _, ok := r.v.quarantine[id]; !ok {
					r.lift(id) // deleted while we did not watch
				}
			}
			for id, n := range old.nodes {
				if _, ok := r.v.nodes[id]; !ok {
					r.nodeGone(id, n)
				}
			}
			r.log.Info("listed root", zap.Int64("revision", rev), zap.Int("keys", keys),
				zap.Int("registered", len(r.v.registry)), zap.Int("nodes", len(r.v.nodes)))
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, kv.ErrClosed) {
			return fmt.Errorf("channelmgr: list: %w", err)
		}
		r.log.Warn("list failed, retrying", zap.Error(err))
		t := r.clock.NewTimer(r.cfg.checkInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.Chan():
		}
	}
}
