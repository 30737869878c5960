package channelmgr

import (
	"fmt"
	"time"

	"github.com/chanwatch/chanwatch/meta"
	"go.uber.org/zap"
)

// A planned move is a drain or a balance move: it takes a running channel
// (or one not yet running) off a live node that did nothing wrong. The move
// budget throttles planned moves only; failover, timeouts, failures and
// deregistration are never budgeted.
//
// A planned move is in flight from its ToRelease until the channel runs
// again (Watched on any node), or until it stops being a planned move (it
// is deregistered, or its node dies and failover takes it). It counts
// against its source node, and against its destination once known (the
// target of a balance move, the node of the ToWatch that follows a drain).

// budget is the move budget's configuration (see WithMoveBudget and
// WithNodeMoveLimit); zeros mean no limit.
type budget struct {
	perWindow int
	window    time.Duration
	perNode   int
}

func (b budget) on() bool { return b.perWindow > 0 || b.perNode > 0 }

func (b budget) validate() error {
	switch {
	case b.perWindow < 0 || b.perNode < 0:
		return fmt.Errorf("move budget %d per window, %d per node: want >= 0 (0: no limit)", b.perWindow, b.perNode)
	case b.perWindow > 0 && b.window <= 0:
		return fmt.Errorf("move budget window %v must be > 0", b.window)
	}
	return nil
}

// WithMoveBudget allows at most n planned moves (drains and balance moves)
// to start in any window of length window across the cluster (default 0:
// no limit, as fast as the moves go). Failover is never budgeted. Moves
// held back wait, Watched where they are, and show in the
// chanwatch_coordinator_moves_queued gauge. n >= 0; window > 0 when n > 0.
func WithMoveBudget(n int, window time.Duration) Option {
	return func(c *config) { c.budget.perWindow, c.budget.window = n, window }
}

// WithNodeMoveLimit allows at most k planned moves in flight per node at
// once (default 0: no limit), counting a move against its source and
// against its destination once known (a balance move's target from the
// start; a drained channel's new node from its ToWatch until it runs).
// Drains are spread by the policy over every serving node, so a drain's
// destinations are limited only as their moves become known. k >= 0.
func WithNodeMoveLimit(k int) Option { return func(c *config) { c.budget.perNode = k } }

// moveCounts is one pass's view of planned moves in flight, built on the
// first budget check of the pass and kept up to date as the pass decides.
type moveCounts struct {
	started int           // planned moves started within the window, this pass's included
	node    map[int64]int // in flight per node
	queued  int           // planned moves held back by the budget this pass
}

// moveState is what the leader remembers of a channel's planned move.
type moveState struct {
	from int64 // source node; 0: no planned move in flight
}

// counts returns the pass's move counts, building them once per pass. A
// channel whose move is known (rt.move.from) counts against its source and
// its current destination; a channel being released on a live node with
// no known move (a predecessor's, or a timeout's) counts against that node:
// conservative after a takeover.
func (r *reconciler) counts(p *plan, now time.Time) *moveCounts {
	if p.moves != nil {
		return p.moves
	}
	mc := &moveCounts{node: map[int64]int{}}
	p.moves = mc
	if w := r.cfg.budget.window; w > 0 {
		keep := r.moveStarts[:0]
		for _, t := range r.moveStarts {
			if now.Sub(t) < w {
				keep = append(keep, t)
			}
		}
		r.moveStarts = keep
		mc.started = len(keep)
	}
	for ch, keys := range r.v.keys {
		rt := r.chans[ch]
		primary, _ := r.pickPrimary(keys)
		if primary == nil {
			continue
		}
		_, live := r.owner(primary)
		// Until the view shows our ToRelease, the key still looks Watched;
		// a warm move is in flight from its prepare request on.
		prep := r.v.prepares[ch]
		done := (rt == nil || !rt.pending(r.v.rev, now)) && (r.v.registry[ch] == nil || primary.node == 0 || !live ||
			(!primary.corrupt && primary.info.State == meta.Watched && len(prep) == 0))
		switch {
		case rt != nil && rt.move.from != 0 && done:
			rt.move.from = 0
		case rt != nil && rt.move.from != 0:
			mc.node[rt.move.from]++
			if to := r.moveTarget(rt, primary); to != 0 && to != rt.move.from {
				mc.node[to]++
			}
		case live && !primary.corrupt && (primary.info.State == meta.ToRelease || primary.info.State == meta.Released):
			mc.node[primary.node]++
		case live && len(prep) > 0 && prep[0].node != primary.node:
			mc.node[primary.node]++ // a predecessor's warm move
			mc.node[prep[0].node]++
		}
	}
	return mc
}

// moveTarget is where a planned move in flight goes, when known.
func (r *reconciler) moveTarget(rt *chanRT, k *keyEntry) int64 {
	if rt.target != 0 {
		return rt.target
	}
	if pks := r.v.prepares[k.ch]; len(pks) > 0 {
		return pks[0].node // preparing there
	}
	if k.node != rt.move.from && !k.corrupt && k.info.State == meta.ToWatch {
		return k.node
	}
	return 0
}

// mayMove reports whether a planned move from node from (to node to, 0:
// not known yet) fits the budget now, and if so counts it. Without a
// budget it always does, at no cost.
func (r *reconciler) mayMove(p *plan, from, to int64, now time.Time) bool {
	b := r.cfg.budget
	if !b.on() {
		return true
	}
	mc := r.counts(p, now)
	if (b.perWindow > 0 && mc.started >= b.perWindow) ||
		(b.perNode > 0 && (mc.node[from] >= b.perNode || (to != 0 && mc.node[to] >= b.perNode))) {
		mc.queued++
		return false
	}
	mc.started++
	mc.node[from]++
	if to != 0 {
		mc.node[to]++
	}
	return true
}

// planned marks u, a planned move's ToRelease of a channel on node from,
// so that once it is written the move counts as started and in flight.
func (r *reconciler) planned(u *unit, ch string, from int64) *unit {
	if u == nil || !r.cfg.budget.on() {
		return u
	}
	rt := r.ch(ch)
	u.done = append(u.done, func(int64) {
		rt.move.from = from
		if r.cfg.budget.perWindow > 0 {
			r.moveStarts = append(r.moveStarts, r.clock.Now())
		}
	})
	return u
}

// drainMove starts moving k off its stopping node, if the budget allows.
// A running channel (warm) whose last preparation did not fail may move
// warm when some serving node can prepare: its destination is chosen after
// the walk (startWarmDrains).
func (r *reconciler) drainMove(p *plan, k *keyEntry, reg *regEntry, warm bool, now time.Time) {
	warm = warm && reg != nil && !reg.corrupt && r.ch(k.ch).prepFails == 0 && r.anyPreparer(p)
	if warm && len(r.v.prepares[k.ch]) > 0 {
		// A running channel reaches its drain with prepare keys only when
		// this pass withdraws them all (decideChannel stops at a request
		// the move keeps). A new request in the same txn may be the same
		// key (the policy picks the same node), and a txn that deletes and
		// puts one key is refused by every backend, every pass: the drain
		// would never start. Wait for the withdrawal to land.
		return
	}
	if !r.mayMove(p, k.node, 0, now) {
		return
	}
	if warm {
		p.warmDrains = append(p.warmDrains, placement{ch: k.ch, reg: reg, src: k})
		return
	}
	p.add(r.planned(r.release(k, reg, "drain", false, "", now), k.ch, k.node))
}

// anyPreparer reports whether a serving node advertises Prepare (counted
// once per pass).
func (r *reconciler) anyPreparer(p *plan) bool {
	if !p.preparersCounted {
		p.preparersCounted = true
		for id := range r.v.nodes {
			if r.canPrepare(id) {
				p.preparers++
			}
		}
	}
	return p.preparers > 0
}

// startWarmDrains chooses, with the policy, where each of the pass's warm
// drains goes: onto a node that can prepare, it starts with a prepare
// request (the release follows Prepared, see prepare.go); onto any other
// node, or none, it is released cold as before.
func (r *reconciler) startWarmDrains(p *plan, serving []int64, now time.Time) {
	if len(p.warmDrains) == 0 {
		return
	}
	targets, _ := r.chooseTargets(p, p.warmDrains, serving, now)
	for i, d := range p.warmDrains {
		k, to := d.src, targets[i]
		if to == 0 || !r.canPrepare(to) {
			p.add(r.planned(r.release(k, d.reg, "drain", false, "", now), k.ch, k.node))
			continue
		}
		if l := p.loads[to]; l != nil {
			l.Channels = append(l.Channels, r.policyChannel(d.ch, d.reg, 0))
		}
		p.add(r.planned(r.prepareUnit(k, d.reg, to, now), k.ch, k.node))
	}
}

// publishMoves sets the moves_queued gauge from the pass's counts, and
// logs when the budget starts or stops holding moves back.
func (r *reconciler) publishMoves(p *plan) {
	q := 0
	if p.moves != nil {
		q = p.moves.queued
	}
	r.c.m.movesQueued.Set(float64(q))
	if (q > 0) != (r.lastQueued > 0) {
		if q > 0 {
			r.log.Info("move budget holds planned moves back", zap.Int("queued", q),
				zap.Int("per_window", r.cfg.budget.perWindow), zap.Duration("window", r.cfg.budget.window),
				zap.Int("per_node", r.cfg.budget.perNode))
		} else {
			r.log.Info("move budget no longer holds moves back")
		}
	}
	r.lastQueued = q
}
