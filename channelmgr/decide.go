package channelmgr

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"go.uber.org/zap"
)

// plan is one pass's decisions.
type plan struct {
	units     []*unit
	byCh      map[string]*unit
	place     []placement
	evictions []eviction
	loads     map[int64]*NodeLoad // serving nodes
	pending   bool                // some channel waits for our own write
	counts    map[string]float64  // registered channels by state, for the channels gauge (full passes only)
	releasing bool                // some assignment is ToRelease: a Released answer may come
	moves     *moveCounts         // planned moves in flight (see budget.go); nil until needed
	// warmDrains are drained channels that may move warm: their
	// destination is chosen after the walk (see startWarmDrains).
	warmDrains []placement
	// preparers counts the serving nodes that advertise Prepare, once
	// preparersCounted (see anyPreparer).
	preparers        int
	preparersCounted bool
}

// placement is a channel to put ToWatch on a node chosen in placeAll.
type placement struct {
	ch    string
	reg   *regEntry
	src   *keyEntry // the key it leaves (nil: none yet)
	avoid int64
	pref  int64 // balance target
	dead  bool  // src is on a dead node
	// prep is the prepare request of a warm move, deleted in the same txn.
	prep *keyEntry
}

// eviction is a live node that did not release k in time.
type eviction struct {
	node int64
	k    *keyEntry
	why  string
}

// add merges u into the channel's unit: all ops of one channel go in one txn.
// A txn may write a key only once (every backend refuses one that writes
// it twice, and the next pass would decide and be refused the same): u
// when it writes a key the channel's unit already writes is left for the
// next pass, which decides again on a view with the earlier write.
func (p *plan) add(u *unit) {
	if u == nil {
		return
	}
	if prev := p.byCh[u.ch]; prev != nil {
		if writesAny(prev.ops, u.ops) {
			return
		}
		prev.cmps = append(prev.cmps, u.cmps...)
		prev.ops = append(prev.ops, u.ops...)
		prev.done = append(prev.done, u.done...)
		return
	}
	p.byCh[u.ch] = u
	p.units = append(p.units, u)
}

// writesAny reports whether an op of b writes a key an op of a writes.
func writesAny(a, b []kv.Op) bool {
	for _, x := range b {
		if !x.IsWrite() {
			continue
		}
		for _, y := range a {
			if y.IsWrite() && y.Key == x.Key {
				return true
			}
		}
	}
	return false
}

// pass makes one round of decisions on the view and carries them out.
func (r *reconciler) pass(ctx context.Context) error {
	now := r.clock.Now()
	defer func(start time.Time) { r.c.m.pass.Observe(time.Since(start).Seconds()) }(time.Now())
	if err := r.resend(ctx, now); err != nil {
		return err
	}
	if err := r.revokeLeases(ctx); err != nil {
		return err
	}
	walk := time.Now()
	r.wake = time.Time{}
	p := r.decide(now)
	r.lastDecide = time.Since(walk)
	// The quick pass places Released answers with these loads. An answer
	// follows a ToRelease, which is in the view (releasing) or written by
	// this pass (units); a settled cluster keeps none, which spares the
	// leader a copy of every channel between passes (B5: about 150 B per
	// channel at 100,000 channels). Without loads a quick pass defers to a
	// full pass at once.
	r.lastLoads = nil
	if p.releasing || len(p.units) > 0 {
		r.lastLoads = p.loads
	}
	for _, e := range p.evictions {
		if err := r.evict(ctx, e); err != nil {
			return err
		}
	}
	if err := r.execute(ctx, p.units, now); err != nil {
		return err
	}
	r.forgetIdle()
	if r.c.onPass != nil {
		r.c.onPass(now, r.v.rev)
	}
	return nil
}

// forgetIdle drops the per-channel state that holds nothing: a zero
// chanRT is what r.ch makes anew, and keeping one for each of 100,000
// settled channels costs about 200 bytes each. It runs after the pass's
// units have run, so no callback of theirs still holds a dropped one; a
// unit whose outcome is unknown marks its channel uncertain, which is not
// zero, so a resend's callbacks find theirs.
func (r *reconciler) forgetIdle() {
	for ch, rt := range r.chans {
		if *rt == (chanRT{}) {
			delete(r.chans, ch)
		}
	}
}

// live reports whether node id has a session key that is not marked
// evicted and that we have not seen evicted or gone.
func (r *reconciler) live(id int64) (*nodeEntry, bool) {
	ne := r.v.nodes[id]
	if ne == nil || ne.evicted() || !r.node(id).evicted.IsZero() {
		return nil, false
	}
	return ne, true
}

// owner reports whether k's node is live and k was made for its current
// session: a key created before the session key (a smaller create revision)
// belongs to an earlier holder of the node ID, which is dead.
func (r *reconciler) owner(k *keyEntry) (*nodeEntry, bool) {
	ne, live := r.live(k.node)
	if !live || k.createRev < ne.createRev {
		return nil, false
	}
	return ne, true
}

// stale reports whether k is on a live node but predates its session.
func (r *reconciler) stale(k *keyEntry) bool {
	ne, live := r.live(k.node)
	return live && k.createRev < ne.createRev
}

// nodeTTL is how long node id's lease may outlive the moment it was last
// renewed: the TTL the node advertises in its session key when known (it
// is the TTL its lease was granted with, and the node fences one margin
// before it), otherwise fallbackTTL.
func (r *reconciler) nodeTTL(id int64) time.Duration {
	if t := r.node(id).ttl; t > 0 {
		return t
	}
	return r.fallbackTTL()
}

// fallbackTTL is the TTL assumed for a node whose own is unknown (gone
// before this term saw its session): the larger of WithNodeTTL and every
// TTL a node has advertised in this term (a longer one is logged).
func (r *reconciler) fallbackTTL() time.Duration {
	return max(r.cfg.nodeTTL, r.maxTTL)
}

// never is a time no clock reaches.
var never = time.Time{}.Add(1<<63 - 1)

// movableAt is when the channels of gone node id may go elsewhere: one node
// TTL after we last learned that it must stop or that its lease is gone,
// never while its lease may still be alive (revokeLease pending), and never
// before one node TTL into our term (our predecessor may have evicted it
// just before we took over).
func (r *reconciler) movableAt(id int64) time.Time {
	nrt := r.node(id)
	if nrt.revokeLease != kv.NoLease {
		return never // not known yet: revoke first
	}
	t := r.start.Add(max(r.fallbackTTL(), r.nodeTTL(id)))
	if nrt.fenceUntil.After(t) {
		t = nrt.fenceUntil
	}
	return t
}

func (rt *chanRT) pending(rev int64, now time.Time) bool {
	if rt.uncertain {
		return true
	}
	return rt.pendingRev > rev && (rt.pendingUntil.IsZero() || now.Before(rt.pendingUntil))
}

// timedOut arms a timeout for key k at its current mod revision (any write,
// such as a Progress bump, re-arms it) and reports whether it expired; see
// expired for watch outages.
func (r *reconciler) timedOut(k *keyEntry, d time.Duration, now time.Time) bool {
	return r.expired(k.key, k.modRev, d, now)
}

// goneWait reports whether key k, on a node that is gone, must still wait
// for the node to have certainly stopped. A Released key need not wait:
// the node said it stopped the channel, and only a new ToWatch restarts it.
func (r *reconciler) goneWait(k *keyEntry, now time.Time) bool {
	if !k.corrupt && k.info.State == meta.Released {
		return false
	}
	if r.stale(k) {
		// The earlier holder of the ID went before the current session key
		// was created; we learned of it no later than we saw that session.
		from := r.node(k.node).incSeen
		if from.Before(r.start) {
			from = r.start
		}
		r.wakeAt(from.Add(r.nodeTTL(k.node)), now)
		return now.Before(from.Add(r.nodeTTL(k.node)))
	}
	at := r.movableAt(k.node)
	r.wakeAt(at, now)
	return now.Before(at)
}

// settled decides, as decideChannel would, on the channel of almost every
// pass: Watched on its live owner, registered, with one key, no failed
// attempt, no preparation, no runtime state, its node not draining. All
// the general path does with such a channel is count it, observe its
// node's health, add it to its node's load as movable, and leave it be; it
// also made a runtime record for it, which forgetIdle dropped after the
// pass: at 1,000,000 channels, 1.7 s of a 3 s pass (B6's profile) and
// much of its garbage. It reports false, having done nothing, for any
// other channel.
func (r *reconciler) settled(p *plan, ch string, reg *regEntry, keys []*keyEntry, now time.Time) bool {
	if r.noSettled || reg == nil || reg.corrupt || len(keys) != 1 || r.chans[ch] != nil || len(r.v.prepares[ch]) > 0 {
		return false
	}
	k := keys[0]
	if k.node == 0 || k.corrupt || k.info.State != meta.Watched || k.info.Attempts != 0 {
		return false
	}
	ne, owned := r.owner(k)
	if !owned || ne.draining() {
		return false
	}
	if p.counts != nil {
		p.counts[meta.Watched.String()]++
	}
	var zero chanRT // what r.ch would make; observeHealth writes only zeros to it here (Attempts is 0)
	r.observeHealth(&zero, k, now)
	if l := p.loads[k.node]; l != nil {
		c := r.policyChannel(ch, reg, 0)
		c.Movable = true
		l.Channels = append(l.Channels, c)
	}
	return true
}

// movableKey returns the assignment key of ch when this pass marked ch
// Movable in node from's load, or nil. It asks the view and the runtime
// records, not the Movable flags: the policy's Balance gets copies of the
// loads that share their Channels with the pass, and may have edited them
// (taken a move's channel out of its source's list, or marked channels
// Movable); a move is checked against what the pass decided. balance runs
// only on a pass with no write of its own, nothing pending and so no
// prepare request left to withdraw: there, decideChannel (and settled)
// mark a channel Movable exactly when it has one key, Watched and not
// corrupt, on its live owner, a serving node, no prepare request, no move
// target and no preparation backoff. A pass keeps no map of every movable
// channel (a million inserts at 1,000,000 channels); balance asks about
// the few it moves.
func (r *reconciler) movableKey(p *plan, ch string, from int64, now time.Time) *keyEntry {
	keys := r.v.keys[ch]
	if r.v.registry[ch] == nil || len(keys) != 1 || len(r.v.prepares[ch]) > 0 || p.loads[from] == nil {
		return nil
	}
	k := keys[0]
	if k.node != from || k.corrupt || k.info.State != meta.Watched {
		return nil
	}
	if _, owned := r.owner(k); !owned {
		return nil
	}
	if rt := r.chans[ch]; rt != nil && (rt.target != 0 || rt.pending(r.v.rev, now) || r.prepareBackoff(rt, now)) {
		return nil
	}
	return k
}

// rank orders a channel's keys when it has more than one (never made by
// chanwatch, but repaired): the lowest rank stays, the rest are released.
func (r *reconciler) rank(k *keyEntry) int {
	_, live := r.owner(k)
	switch {
	case k.node != 0 && live && !k.corrupt && k.info.State == meta.Watched:
		return 0
	case k.node != 0 && live && !k.corrupt:
		return 1
	case k.node != 0 && live:
		return 2
	case k.node != 0 && !k.corrupt:
		return 3
	case !k.corrupt:
		return 4
	}
	return 5
}

func (r *reconciler) pickPrimary(keys []*keyEntry) (*keyEntry, []*keyEntry) {
	switch len(keys) {
	case 0:
		return nil, nil
	case 1:
		return keys[0], nil
	}
	all := slices.Clone(keys)
	slices.SortFunc(all, func(a, b *keyEntry) int {
		if c := cmp.Compare(r.rank(a), r.rank(b)); c != 0 {
			return c
		}
		if c := cmp.Compare(b.modRev, a.modRev); c != 0 {
			return c
		}
		return cmp.Compare(a.key, b.key)
	})
	return all[0], all[1:]
}

// servingNodes returns the IDs of live serving nodes, sorted.
func (r *reconciler) servingNodes() []int64 {
	var ids []int64
	for id, ne := range r.v.nodes {
		if _, live := r.live(id); live && ne.serving() {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// decide walks every channel (registered or assigned) once.
func (r *reconciler) decide(now time.Time) *plan {
	p := &plan{byCh: map[string]*unit{}, loads: map[int64]*NodeLoad{}}
	serving := r.servingNodes()
	for _, id := range serving {
		p.loads[id] = r.nodeLoad(id)
	}
	// Every channel, registered or assigned, once, by name: a slice, not
	// a set (at 1,000,000 channels the set cost more than the sort).
	sorted := make([]string, 0, len(r.v.registry)+len(r.v.keys)/16)
	for ch := range r.v.registry {
		sorted = append(sorted, ch)
	}
	for ch := range r.v.keys {
		if r.v.registry[ch] == nil {
			sorted = append(sorted, ch)
		}
	}
	for ch := range r.v.prepares {
		if r.v.registry[ch] == nil && r.v.keys[ch] == nil {
			sorted = append(sorted, ch) // a request left behind: withdrawn
		}
	}
	slices.Sort(sorted)
	p.counts = map[string]float64{"remaining": 0, "unassigned": 0}
	for s := meta.ToWatch; s <= meta.ReleaseFailure; s++ {
		p.counts[s.String()] = 0
	}
	for _, ch := range sorted {
		r.decideChannel(p, ch, now)
	}
	r.placeAll(p, serving, now)
	r.startWarmDrains(p, serving, now)
	if len(p.units) == 0 && len(p.evictions) == 0 && !p.pending && len(r.retry) == 0 {
		r.balance(p, serving, now)
	}
	r.publishHealth(p, now)
	r.publishMoves(p)
	for st, n := range p.counts {
		r.c.m.channels.WithLabelValues(st).Set(n)
	}
	// Forget channels and timers that are gone for good.
	for ch, rt := range r.chans {
		if r.v.registry[ch] == nil && r.v.keys[ch] == nil && !rt.pending(r.v.rev, now) {
			delete(r.chans, ch)
		}
	}
	// Forget gone nodes once nothing of theirs is left to wait for. Only
	// gone nodes are candidates; the keys are scanned for them alone, and
	// not at all in the usual pass that has none.
	gone := map[int64]bool{}
	for id, nrt := range r.nodes {
		if r.v.nodes[id] == nil && nrt.revokeLease == kv.NoLease && !now.Before(nrt.fenceUntil) {
			gone[id] = true
		}
	}
	for id := range r.health {
		if r.v.nodes[id] == nil {
			gone[id] = true
		}
	}
	if len(gone) > 0 {
		referenced := map[int64]bool{}
		for _, keys := range r.v.keys {
			for _, k := range keys {
				if gone[k.node] {
					referenced[k.node] = true
				}
			}
		}
		for id, nrt := range r.nodes {
			if gone[id] && !referenced[id] && nrt.revokeLease == kv.NoLease && !now.Before(nrt.fenceUntil) {
				delete(r.nodes, id)
			}
		}
		for id := range r.health {
			if gone[id] && !referenced[id] {
				delete(r.health, id) // an address's release quarantine stays in byAddr
			}
		}
	}
	for key := range r.timers {
		if _, ch, err := meta.ParseChannelKey(key); err == nil && r.v.key(ch, key) != nil {
			continue
		}
		if _, ch, err := meta.ParsePrepareKey(key); err == nil && r.v.prepareKey(ch, key) != nil {
			continue
		}
		delete(r.timers, key)
	}
	return p
}

func (r *reconciler) decideChannel(p *plan, ch string, now time.Time) {
	reg := r.v.registry[ch]
	keys := r.v.keys[ch]
	if r.settled(p, ch, reg, keys, now) {
		return
	}
	rt := r.ch(ch)
	for _, k := range keys {
		if !k.corrupt && k.info.State == meta.ToRelease {
			p.releasing = true
		}
	}
	primary, extras := r.pickPrimary(keys)
	if reg == nil && primary != nil {
		extras = append([]*keyEntry{primary}, extras...)
		primary = nil
	}
	if reg != nil && p.counts != nil {
		switch {
		case primary == nil:
			p.counts["unassigned"]++
		case primary.node == 0:
			p.counts["remaining"]++
		case !primary.corrupt:
			p.counts[primary.info.State.String()]++
		}
	}
	r.observeHealth(rt, primary, now)
	// Count the load where the channel is (or is going) even while we wait.
	pending := rt.pending(r.v.rev, now)
	var at int64
	switch {
	case pending && rt.placedOn != 0:
		at = rt.placedOn // our placement is not in the view yet
	case primary != nil && primary.node != 0 && !primary.corrupt && primary.info.State != meta.Released:
		at = primary.node
		if rt.target != 0 {
			at = rt.target
		} else if pks := r.v.prepares[ch]; len(pks) > 0 && !pks[0].corrupt && pks[0].node != primary.node {
			at = pks[0].node // a warm move in flight goes there
		}
	case reg != nil && primary != nil && primary.node != 0 && r.inBackoff(rt, primary, now):
		// A failed channel waiting out its backoff counts where it failed,
		// so the policy does not see a failing node as empty.
		at = primary.node
	}
	if l := p.loads[at]; l != nil && reg != nil {
		l.Channels = append(l.Channels, r.policyChannel(ch, reg, 0))
	}
	if pending {
		p.pending = true
		return
	}
	// Our write is in the view (or we stopped waiting for it): nothing of
	// it is left to remember, and a settled channel's chanRT is zero again
	// (forgetIdle drops it).
	rt.placedOn, rt.pendingRev, rt.pendingUntil = 0, 0, time.Time{}
	// A move target outlives our ToRelease only until the channel lands
	// (or runs again where it was, or goes away). Checked only on a view
	// that has our own writes: before that, it still shows Watched.
	if rt.target != 0 && (reg == nil || primary == nil || primary.node == rt.target ||
		(!primary.corrupt && (primary.info.State == meta.Watched || primary.info.State == meta.ToWatch))) {
		rt.target = 0
	}
	var prep *keyEntry
	if len(r.v.prepares[ch]) > 0 {
		prep = r.decidePrepare(p, ch, reg, primary, len(extras), now)
	}
	const maxExtrasPerPass = 8 // keep one channel's merged unit far below MaxTxnOps
	for i, k := range extras {
		if i == maxExtrasPerPass {
			break
		}
		r.cleanup(p, ch, reg, k, now)
	}
	if primary == nil {
		if reg == nil {
			return
		}
		if reg.corrupt {
			r.hold(rt, reg.modRev, "registered channel has a corrupt spec and no assignment: cannot place it", ch, 0)
			return
		}
		p.place = append(p.place, placement{ch: ch, reg: reg})
		return
	}
	if _, owned := r.owner(primary); owned && len(extras) == 0 && !primary.corrupt && primary.info.State == meta.Watched && rt.target == 0 && prep == nil &&
		!r.prepareBackoff(rt, now) {
		if l := p.loads[primary.node]; l != nil && at == primary.node {
			l.Channels[len(l.Channels)-1].Movable = true // balance checks a move with movableKey
		}
	}
	if prep != nil && primary.info.State == meta.Watched {
		return // a warm move in flight: decidePrepare releases it once Prepared
	}
	r.decidePrimary(p, ch, reg, primary, prep, now)
}

// policyChannel describes ch to the policy.
func (r *reconciler) policyChannel(ch string, reg *regEntry, avoid int64) Channel {
	c := Channel{Name: ch, Avoid: avoid}
	if reg != nil {
		c.CollectionID = reg.spec.CollectionID
		c.Weight, c.Require, c.Spread = r.weightOf(ch, reg), reg.spec.Require, reg.spec.Spread
	}
	return c
}

// hold logs, once per key revision, a channel we leave alone.
func (r *reconciler) hold(rt *chanRT, rev int64, msg, ch string, node int64) {
	if rt.heldRev == rev {
		return
	}
	rt.heldRev = rev
	r.log.Warn(msg, zap.String("channel", ch), zap.Int64("node", node), zap.Int64("revision", rev))
}

// decidePrimary acts on the assignment of a registered channel.
// prep is the channel's prepare request the move in flight keeps (nil:
// none): the placement after Released prefers its node and deletes it.
func (r *reconciler) decidePrimary(p *plan, ch string, reg *regEntry, k *keyEntry, prep *keyEntry, now time.Time) {
	rt := r.ch(ch)
	if k.node == 0 {
		if reg.corrupt && k.corrupt {
			r.hold(rt, k.modRev, "remaining channel has a corrupt value and a corrupt spec: cannot place it", ch, 0)
			return
		}
		p.place = append(p.place, placement{ch: ch, reg: reg, src: k, avoid: r.avoidOf(k)})
		return
	}
	ne, live := r.owner(k)
	if !live {
		if r.goneWait(k, now) {
			r.waitGone(k, now)
			return
		}
		p.place = append(p.place, placement{ch: ch, reg: reg, src: k, dead: true, avoid: r.avoidOf(k), pref: rt.target})
		return
	}
	if k.corrupt {
		p.add(r.release(k, reg, "corrupt", false, "", now))
		return
	}
	switch k.info.State {
	case meta.ToWatch:
		switch {
		case ne.draining():
			r.drainMove(p, k, reg, false, now)
		case r.timedOut(k, r.cfg.watchTimeout, now):
			r.c.m.timeouts.WithLabelValues("watch").Inc()
			p.add(r.release(k, reg, "watch_timeout", true,
				fmt.Sprintf("watch timeout: no progress on node %d for %v", k.node, r.cfg.watchTimeout), now))
		}
	case meta.Watched:
		if ne.draining() {
			r.drainMove(p, k, reg, true, now)
		}
	case meta.WatchFailure:
		p.add(r.release(k, reg, "watch_failure", true, "", now))
	case meta.ToRelease:
		if r.timedOut(k, r.cfg.releaseTimeout, now) {
			r.c.m.timeouts.WithLabelValues("release").Inc()
			p.evictions = append(p.evictions, eviction{node: k.node, k: k, why: "release timeout"})
		}
	case meta.ReleaseFailure:
		p.evictions = append(p.evictions, eviction{node: k.node, k: k, why: "release failure: " + k.info.LastError})
	case meta.Released:
		if r.inBackoff(rt, k, now) {
			return
		}
		pl := placement{ch: ch, reg: reg, src: k, avoid: r.avoidOf(k), pref: rt.target, prep: prep}
		if prep != nil && pl.pref == 0 {
			pl.pref = prep.node
		}
		p.place = append(p.place, pl)
	}
}

// inBackoff reports whether k, Released after a failed attempt, must wait
// before it is placed again (the wait is armed once per key revision).
func (r *reconciler) inBackoff(rt *chanRT, k *keyEntry, now time.Time) bool {
	if k.corrupt || k.info.State != meta.Released || k.info.Attempts == 0 {
		return false
	}
	if rt.backoffRev != k.modRev {
		rt.backoffRev, rt.notBefore = k.modRev, now.Add(r.cfg.backoff(k.info.Attempts))
	}
	r.wakeAt(rt.notBefore, now)
	return now.Before(rt.notBefore)
}

// waitGone logs, once per node, that its channels wait for it to stop.
func (r *reconciler) waitGone(k *keyEntry, now time.Time) {
	nrt := r.node(k.node)
	if nrt.waitLogged {
		return
	}
	nrt.waitLogged = true
	fields := []zap.Field{zap.Int64("node", k.node), zap.String("channel", k.ch), zap.Int64("revision", k.modRev)}
	if r.stale(k) {
		fields = append(fields, zap.String("why", "the key predates the node's current session"))
	} else if at := r.movableAt(k.node); nrt.revokeLease == kv.NoLease {
		fields = append(fields, zap.Duration("wait", at.Sub(now)))
	} else {
		fields = append(fields, zap.String("why", "the node's lease is not known to be gone yet"))
	}
	r.log.Info("channels of a gone node wait until it has certainly stopped", fields...)
}

func (r *reconciler) avoidOf(k *keyEntry) int64 {
	if k == nil || k.corrupt || k.info.Attempts == 0 {
		return 0
	}
	return k.info.FailedNode
}

// cleanup takes away a key that should not exist: the channel is not
// registered, or the key duplicates the channel's primary key.
func (r *reconciler) cleanup(p *plan, ch string, reg *regEntry, k *keyEntry, now time.Time) {
	why := "deregistered"
	if reg != nil {
		why = "duplicate"
	}
	if k.node == 0 {
		p.add(r.remove(k, why))
		return
	}
	if _, live := r.owner(k); !live {
		if r.goneWait(k, now) {
			r.waitGone(k, now)
			return
		}
		p.add(r.remove(k, why))
		return
	}
	if k.corrupt {
		p.add(r.release(k, reg, why, false, "", now))
		return
	}
	switch k.info.State {
	case meta.ToWatch, meta.Watched, meta.WatchFailure:
		p.add(r.release(k, reg, why, false, "", now))
	case meta.ToRelease:
		if r.timedOut(k, r.cfg.releaseTimeout, now) {
			r.c.m.timeouts.WithLabelValues("release").Inc()
			p.evictions = append(p.evictions, eviction{node: k.node, k: k, why: "release timeout"})
		}
	case meta.ReleaseFailure:
		p.evictions = append(p.evictions, eviction{node: k.node, k: k, why: "release failure: " + k.info.LastError})
	case meta.Released:
		p.add(r.remove(k, why))
	}
}

// baseInfo is k's value, or a fresh one from the spec when k is corrupt.
func baseInfo(ch string, reg *regEntry, k *keyEntry) meta.ChannelInfo {
	var info meta.ChannelInfo
	if k != nil && !k.corrupt {
		info = k.info
	}
	info.Name = ch
	if reg != nil && !reg.corrupt {
		info.CollectionID = reg.spec.CollectionID
		info.Vchannel = reg.spec.Vchannel
	}
	return info
}

// release marks k ToRelease (CAS on its mod revision). A failure counts an
// attempt against k's node; a move of a running channel clears the count.
func (r *reconciler) release(k *keyEntry, reg *regEntry, reason string, failure bool, lastErr string, now time.Time) *unit {
	info := baseInfo(k.ch, reg, k)
	switch {
	case failure:
		info.Attempts++
		info.FailedNode = k.node
		if lastErr != "" {
			info.LastError = lastErr
		}
	case !k.corrupt && k.info.State == meta.Watched:
		info.Attempts, info.FailedNode = 0, 0
	}
	info.State = meta.ToRelease
	info.StartTime = now
	val, err := meta.EncodeChannelInfo(info)
	if err != nil {
		r.log.Error("cannot encode ToRelease", zap.String("channel", k.ch), zap.Int64("node", k.node),
			zap.Int64("revision", k.modRev), zap.Error(err))
		return nil
	}
	node, ch, m := k.node, k.ch, r.c.m
	return &unit{
		ch:   ch,
		cmps: []kv.Cmp{kv.CmpModRevision(k.key, kv.Equal, k.modRev)},
		ops:  []kv.Op{kv.OpPut(k.key, val)},
		done: []func(int64){func(rev int64) {
			m.moves.WithLabelValues(reason).Inc()
			r.log.Info("releasing channel", zap.String("channel", ch), zap.Int64("node", node),
				zap.Int64("revision", rev), zap.String("reason", reason), zap.Int("attempts", info.Attempts))
		}},
	}
}

// remove deletes k (CAS on its mod revision).
func (r *reconciler) remove(k *keyEntry, reason string) *unit {
	node, ch := k.node, k.ch
	return &unit{
		ch:   ch,
		cmps: []kv.Cmp{kv.CmpModRevision(k.key, kv.Equal, k.modRev)},
		ops:  []kv.Op{kv.OpDelete(k.key)},
		done: []func(int64){func(rev int64) {
			r.log.Info("deleted assignment", zap.String("channel", ch), zap.Int64("node", node),
				zap.Int64("revision", rev), zap.String("reason", reason))
		}},
	}
}

// placeAll chooses nodes for every channel that needs one and writes the
// moves: each is one txn unit that deletes the old key (CAS) and creates
// the new one (missing), so a channel never has two keys.
func (r *reconciler) placeAll(p *plan, serving []int64, now time.Time) {
	if len(p.place) == 0 {
		r.c.m.unplaceable.Set(0)
		return
	}
	targets, waits := r.chooseTargets(p, p.place, serving, now)
	r.c.m.unplaceable.Set(float64(waiting(waits)))
	for i, pl := range p.place {
		if u := r.placeUnit(pl, targets[i], waits[i], now); u != nil {
			if l := p.loads[targets[i]]; l != nil {
				l.Channels = append(l.Channels, r.policyChannel(pl.ch, pl.reg, 0))
			}
			p.add(u)
		}
	}
}

// chooseTargets picks a serving node for each of place (0: none may take
// it, and waits says why): a move's preferred node when it may take it,
// probing nodes one channel each, then the policy, under the channels'
// required labels.
func (r *reconciler) chooseTargets(p *plan, place []placement, serving []int64, now time.Time) (targets []int64, waits []string) {
	targets = make([]int64, len(place))
	waits = make([]string, len(place)) // why a channel waits in remaining
	if len(serving) > 0 {
		isServing := func(id int64) bool { _, ok := p.loads[id]; return ok }
		// Quarantined nodes take nothing; a probing node takes one channel.
		ok, probe := r.nodeCaps(serving, now)
		var rest []int
		var chs []Channel
		for i, pl := range place {
			c := r.policyChannel(pl.ch, pl.reg, 0)
			meets := func(id int64) bool { return p.loads[id].Meets(c) }
			avoid := r.avoidAmong(pl.avoid, serving, meets)
			if pl.pref != 0 && isServing(pl.pref) && pl.pref != avoid && r.mayTake(pl.pref, now) && meets(pl.pref) {
				targets[i] = pl.pref
				probe = slices.DeleteFunc(probe, func(id int64) bool { return id == pl.pref })
				continue
			}
			if j := slices.IndexFunc(probe, func(id int64) bool { return id != avoid && meets(id) }); j >= 0 {
				targets[i] = probe[j]
				probe = slices.Delete(probe, j, j+1)
				continue
			}
			if !isServing(avoid) {
				avoid = 0
			}
			rest = append(rest, i)
			c.Avoid = avoid
			chs = append(chs, c)
		}
		got, why := r.placeConstrained(chs, ok, serving, p.loads)
		for j, i := range rest {
			targets[i], waits[i] = got[j], why[j]
		}
	}
	return targets, waits
}

// policyPlace calls the policy; a panic is logged and treated as an invalid
// answer, so a buggy policy cannot take the coordinator down.
func (r *reconciler) policyPlace(chs []Channel, loads []NodeLoad) (got []int64) {
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("policy Place panicked", zap.Any("panic", p), zap.Int64("revision", r.v.rev))
			got = nil
		}
	}()
	return r.cfg.policy.Place(chs, loads)
}

// policyBalance calls the policy; a panic means no moves.
func (r *reconciler) policyBalance(loads []NodeLoad, budget int) (moves []Move) {
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("policy Balance panicked", zap.Any("panic", p), zap.Int64("revision", r.v.rev))
			moves = nil
		}
	}()
	return r.cfg.policy.Balance(loads, budget)
}

func validPlacement(got []int64, chs []Channel, loads map[int64]*NodeLoad) bool {
	if len(got) != len(chs) {
		return false
	}
	for i, id := range got {
		if _, ok := loads[id]; !ok {
			return false
		}
		if chs[i].Avoid != 0 && id == chs[i].Avoid && len(loads) > 1 {
			return false
		}
		if !loads[id].Meets(chs[i]) {
			return false
		}
	}
	return true
}

// placeUnit writes channel pl.ch on node target (0: remaining, where wait,
// if set, is why no serving node may take it: its LastError).
func (r *reconciler) placeUnit(pl placement, target int64, wait string, now time.Time) *unit {
	src := pl.src
	if target == 0 && src != nil && src.node == 0 && !waitChanged(src, wait) {
		return nil // already remaining, and still no node
	}
	info := baseInfo(pl.ch, pl.reg, src)
	if target == 0 && wait != "" {
		info.LastError = wait
	}
	if pl.dead && !src.corrupt && (src.info.State == meta.ToWatch || src.info.State == meta.WatchFailure) {
		// A node that dies while starting the channel may have died of it.
		info.Attempts++
		info.FailedNode = src.node
		info.LastError = fmt.Sprintf("node %d went away while the channel was %v", src.node, src.info.State)
	}
	info.State = meta.ToWatch
	info.StartTime = now
	info.AssignRevision = 0
	info.Progress = 0
	val, err := meta.EncodeChannelInfo(info)
	if err != nil {
		r.log.Error("cannot encode ToWatch", zap.String("channel", pl.ch), zap.Int64("node", target),
			zap.Int64("revision", r.v.rev), zap.Error(err))
		return nil
	}
	key := meta.ChannelKey(target, pl.ch)
	u := &unit{ch: pl.ch}
	if pl.reg != nil {
		u.cmps = append(u.cmps, kv.CmpModRevision(meta.RegistryKey(pl.ch), kv.Equal, pl.reg.modRev))
	}
	var from int64 = -1
	switch {
	case src == nil:
		u.cmps = append(u.cmps, kv.CmpMissing(key))
		if target != 0 {
			u.cmps = append(u.cmps, kv.CmpMissing(meta.RemainingKey(pl.ch)))
		}
		u.ops = append(u.ops, kv.OpPut(key, val))
	case src.key == key && r.stale(src):
		// Back onto the ID whose earlier holder the key was made for: a put
		// would keep the old create revision, which the node ignores. Delete
		// it; the next pass places the channel afresh.
		return r.remove(src, "predates the node's session")
	case src.key == key:
		from = src.node
		u.cmps = append(u.cmps, kv.CmpModRevision(src.key, kv.Equal, src.modRev))
		u.ops = append(u.ops, kv.OpPut(key, val))
	default:
		from = src.node
		u.cmps = append(u.cmps, kv.CmpModRevision(src.key, kv.Equal, src.modRev), kv.CmpMissing(key))
		u.ops = append(u.ops, kv.OpDelete(src.key), kv.OpPut(key, val))
	}
	if pl.prep != nil {
		u.cmps = append(u.cmps, kv.CmpModRevision(pl.prep.key, kv.Equal, pl.prep.modRev))
		u.ops = append(u.ops, kv.OpDelete(pl.prep.key))
	}
	rt, m, ch := r.ch(pl.ch), r.c.m, pl.ch
	u.done = append(u.done, func(rev int64) {
		rt.target, rt.placedOn = 0, target
		rt.prepFails, rt.prepNotBefore = 0, time.Time{}
		if pl.dead {
			m.moves.WithLabelValues("failover").Inc()
		}
		fields := []zap.Field{zap.String("channel", ch), zap.Int64("node", target), zap.Int64("revision", rev)}
		if from >= 0 {
			fields = append(fields, zap.Int64("from", from))
		}
		if target == 0 && wait != "" {
			r.log.Warn("channel remaining: no serving node may take it", append(fields, zap.String("why", wait))...)
			return
		}
		if target == 0 {
			r.log.Info("channel remaining: no serving node", fields...)
			return
		}
		m.placed.Inc()
		r.log.Info("assigned channel", append(fields, zap.Int("attempts", info.Attempts))...)
	})
	return u
}

// balance asks the policy for moves while fewer than MaxMovesInFlight are
// under way, and starts them (ToRelease; the placement after Released goes
// to the move's target).
func (r *reconciler) balance(p *plan, serving []int64, now time.Time) {
	if r.v.paused {
		return
	}
	// Only healthy nodes, and probing nodes for one move each, are offered.
	ok, probe := r.nodeCaps(serving, now)
	serving = slices.Sorted(slices.Values(append(slices.Clone(ok), probe...)))
	if len(serving) < 2 {
		return
	}
	probes, used := map[int64]bool{}, map[int64]bool{}
	for _, id := range probe {
		probes[id] = true
	}
	inflight := r.preparing()
	for _, rt := range r.chans {
		if rt.target != 0 {
			inflight++
		}
	}
	budget := r.cfg.maxMovesInFlight - inflight
	if budget <= 0 {
		return
	}
	loads := make([]NodeLoad, 0, len(serving))
	for _, id := range serving {
		loads = append(loads, *p.loads[id])
	}
	seen := map[string]bool{}
	for _, mv := range r.policyBalance(loads, budget) {
		k := r.movableKey(p, mv.Channel, mv.From, now)
		if budget == 0 || k == nil || seen[mv.Channel] || k.node != mv.From || mv.To == mv.From || p.loads[mv.To] == nil ||
			!slices.Contains(serving, mv.To) || used[mv.To] || !p.loads[mv.To].Meets(r.policyChannel(mv.Channel, r.v.registry[mv.Channel], 0)) {
			continue
		}
		if !r.mayMove(p, mv.From, mv.To, now) {
			continue
		}
		if probes[mv.To] {
			used[mv.To] = true // one probe at a time
		}
		seen[mv.Channel] = true
		budget--
		if r.canPrepare(mv.To) {
			// Warm handoff: the destination prepares first (prepare.go).
			p.add(r.planned(r.prepareUnit(k, r.v.registry[mv.Channel], mv.To, r.clock.Now()), mv.Channel, mv.From))
			continue
		}
		u := r.planned(r.release(k, r.v.registry[mv.Channel], "balance", false, "", r.clock.Now()), mv.Channel, mv.From)
		if u == nil {
			continue
		}
		rt, to := r.ch(mv.Channel), mv.To
		u.done = append(u.done, func(int64) { rt.target = to })
		p.add(u)
	}
}

// evict evicts a live node that did not release in time (or failed to),
// after checking that the view is not behind (the key still is as we saw
// it). The eviction is a guarded write: the node's session key is marked
// evicted (meta.NodeEvicted, on the node's own lease) in a txn that carries
// the leader guard and a compare on the session key's mod revision, so a
// deposed coordinator's eviction fails its compare and writes nothing. The
// node fences itself as soon as it sees the mark. Its lease is then revoked
// (see revokeLeases), and its channels move one node TTL after the store
// has said the lease is gone; nothing a Revoke answers shortens that.
func (r *reconciler) evict(ctx context.Context, e eviction) error {
	ne, live := r.live(e.node)
	if !live {
		return nil
	}
	got, _, err := r.b.Get(ctx, e.k.key)
	if err != nil || got.ModRevision != e.k.modRev {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return nil // changed meanwhile, or unreadable: decide again next pass
	}
	key := meta.NodeSessionKey(e.node)
	var then kv.Op
	if ne.lease == kv.NoLease || ne.corrupt {
		// Not a real session (or one we cannot rewrite): take the key away.
		then = kv.OpDelete(key)
	} else {
		mark := ne.sess
		mark.State, mark.EvictedBy, mark.EvictReason = meta.NodeEvicted, r.l.Token(), e.why
		val, err := meta.EncodeNodeSession(mark)
		if err != nil {
			r.log.Error("eviction: cannot encode the mark", zap.Int64("node", e.node), zap.Error(err))
			return nil
		}
		then = kv.OpPutLease(key, val, ne.lease)
	}
	resp, err := r.txn(ctx, kv.Txn{
		If:   []kv.Cmp{r.l.Guard(), kv.CmpModRevision(key, kv.Equal, ne.modRev)},
		Then: []kv.Op{then},
		Else: []kv.Op{kv.OpGet(meta.CoordinatorKey)},
	})
	now := r.clock.Now()
	switch {
	case err != nil && ctx.Err() != nil:
		return ctx.Err()
	case err != nil && isLeaseGone(err):
		// The lease went meanwhile: the node is gone, not evicted by us.
		r.markGone(e.node, r.node(e.node), ne.lease, now, "lease gone at eviction")
		return nil
	case err != nil:
		// Unknown or failed: if the mark landed, the view will show it.
		r.log.Warn("eviction write failed; deciding again", zap.Int64("node", e.node), zap.Error(err))
		return nil
	case !resp.Succeeded:
		if r.deposed(resp) {
			r.c.m.fenced.Inc()
			r.log.Warn("eviction rejected by the leader guard: another coordinator leads", zap.Int64("node", e.node),
				zap.Int64("revision", resp.Revision))
			return errDeposed
		}
		return nil // the session key changed: decide again on the new view
	}
	nrt := r.node(e.node)
	r.markGone(e.node, nrt, ne.lease, now, "evicted")
	r.c.m.evictions.Inc()
	r.log.Warn("evicted node: its channels move once it has certainly stopped",
		zap.Int64("node", e.node), zap.String("channel", e.k.ch), zap.Int64("revision", resp.Revision),
		zap.String("why", e.why), zap.Time("fence_until", nrt.fenceUntil))
	return r.revokeLeases(ctx)
}

// revokeLeases revokes the leases of nodes that are evicted or gone, until
// the store says each is gone. Only then is a node certainly unable to
// renew, so its wait (fenceUntil) restarts from that answer: one node TTL
// after the revoke returned, whatever it returned (done, or "not found",
// which proves nothing about when the lease went). An ambiguous or failed
// revoke is retried on the next pass, and the channels keep waiting.
func (r *reconciler) revokeLeases(ctx context.Context) error {
	for id, nrt := range r.nodes {
		lease := nrt.revokeLease
		if lease == kv.NoLease {
			continue
		}
		err := r.b.Revoke(ctx, lease)
		now := r.clock.Now()
		switch {
		case err == nil || isLeaseGone(err):
			if until := now.Add(r.nodeTTL(id)); until.After(nrt.fenceUntil) {
				nrt.fenceUntil = until
			}
			if nrt.leaseGone == nil {
				nrt.leaseGone = map[kv.LeaseID]bool{}
			}
			nrt.leaseGone[lease] = true
			nrt.revokeLease = kv.NoLease
			r.log.Info("node's lease is gone: its channels move one node TTL from now",
				zap.Int64("node", id), zap.Int64("lease", int64(lease)), zap.Bool("revoked_now", err == nil),
				zap.Time("fence_until", nrt.fenceUntil))
		case ctx.Err() != nil:
			return ctx.Err()
		default:
			r.log.Warn("revoking a gone or evicted node's lease failed; retrying", zap.Int64("node", id), zap.Error(err))
		}
	}
	return nil
}
