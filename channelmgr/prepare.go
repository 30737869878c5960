package channelmgr

import (
	"fmt"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"go.uber.org/zap"
)

// Warm handoff (nodewatch.Preparer). A balance move or a drain of a
// running channel onto a node that advertises Prepare
// (meta.NodeSession.Prepare; a drain's destination is picked by the policy
// after the walk, see startWarmDrains) starts with a prepare request
// instead of the source's ToRelease:
//
//  1. the leader creates prepare/<dest>/<channel> (ToPrepare), comparing
//     the channel's assignment key, so the request only exists while the
//     channel runs elsewhere;
//  2. the destination answers Prepared (or PrepareFailure) by CAS; a
//     request that shows no change (no answer, no progress heartbeat) for
//     the watch timeout is timed out;
//  3. on Prepared the leader marks the source ToRelease, as for any move;
//  4. on the source's Released, one txn deletes the old key, puts ToWatch
//     on the destination and deletes the prepare key.
//
// A request is abandoned (its key deleted; the channel stays where it
// runs, and is not moved cold by this move: the policy may propose it
// again after a backoff; a drained channel is released cold at once) when the preparation fails or times out (both count against the
// destination's health, like a failed Watch), when the destination dies,
// stops serving or no longer advertises Prepare, when the source dies
// (failover is always cold, and the delete goes in the failover's txn),
// when the channel is deregistered or changes in any other way, and when
// the source starts releasing before the destination is prepared.
//
// Nothing of it is leader memory: the prepare keys are the state, so a new
// leader re-lists them with the rest of the root and carries on from
// whatever state they are in (a timeout restarts when it first sees the
// key), or abandons them by the rules above. A prepare key never makes its
// node an owner, so deleting one needs no wait, even on a dead node.

// prepareKey returns channel ch's prepare key key (nil: not in the view).
func (v *view) prepareKey(ch, key string) *keyEntry {
	for _, e := range v.prepares[ch] {
		if e.key == key {
			return e
		}
	}
	return nil
}

// applyPrepare folds one event under prepare/ into the view.
func (r *reconciler) applyPrepare(kvp kv.KeyValue, put bool) {
	node, ch, err := meta.ParsePrepareKey(kvp.Key)
	if err != nil {
		r.bad("prepare", kvp.Key, kvp.ModRevision, err)
		return
	}
	ks := r.v.prepares[ch]
	for i, e := range ks {
		if e.key == kvp.Key {
			ks = append(ks[:i:i], ks[i+1:]...)
			break
		}
	}
	if put {
		e := &keyEntry{key: kvp.Key, node: node, ch: ch, modRev: kvp.ModRevision, createRev: kvp.CreateRevision}
		info, err := meta.DecodePrepareInfo(kvp.Key, kvp.Value)
		if err != nil {
			r.bad("prepare", kvp.Key, kvp.ModRevision, err)
			e.corrupt = true
		}
		e.info = info
		ks = append(ks, e)
	}
	if len(ks) == 0 {
		delete(r.v.prepares, ch)
		return
	}
	r.v.prepares[ch] = ks
}

// decidePrepare acts on the prepare keys of ch and returns the one the
// move in flight keeps (nil: none). On Prepared it starts the source's
// release (a balance move's, or a drain's).
func (r *reconciler) decidePrepare(p *plan, ch string, reg *regEntry, primary *keyEntry, extras int, now time.Time) *keyEntry {
	var kept *keyEntry
	for _, pk := range r.v.prepares[ch] {
		why, failed := r.abandonPrepare(reg, primary, extras, pk), false
		switch {
		case why != "":
		case kept != nil:
			why = "duplicate prepare request"
		case pk.info.State == meta.PrepareFailure:
			why, failed = "prepare failed: "+pk.info.LastError, true
		case pk.info.State == meta.ToPrepare && r.timedOut(pk, r.cfg.watchTimeout, now):
			r.c.m.timeouts.WithLabelValues("prepare").Inc()
			why, failed = fmt.Sprintf("prepare timeout: no progress on node %d for %v", pk.node, r.cfg.watchTimeout), true
		default:
			kept = pk
			continue
		}
		if failed {
			r.noteFailure(pk.node, ch, pk.modRev, why, now)
			// The channel stays where it runs; the policy would propose
			// the same move at once, so the next try waits a backoff.
			rt := r.ch(ch)
			rt.prepFails++
			rt.prepNotBefore = now.Add(r.cfg.backoff(rt.prepFails))
		}
		p.add(r.removePrepare(pk, why))
	}
	if kept == nil || kept.info.State != meta.Prepared || primary.info.State != meta.Watched {
		return kept
	}
	reason := "balance"
	if ne, _ := r.owner(primary); ne != nil && ne.draining() {
		reason = "drain"
	}
	u := r.release(primary, reg, reason, false, "", now)
	if u != nil {
		rt, to := r.ch(ch), kept.node
		u.done = append(u.done, func(int64) { rt.target = to })
	}
	p.add(u)
	return kept
}

// abandonPrepare says why prepare key pk must go ("": it may stay): the
// move it prepares can no longer complete warm.
func (r *reconciler) abandonPrepare(reg *regEntry, primary *keyEntry, extras int, pk *keyEntry) string {
	ne, live := r.live(pk.node)
	switch {
	case reg == nil:
		return "deregistered"
	case reg.corrupt, pk.corrupt:
		return "corrupt spec or request"
	case extras > 0:
		return "the channel has more than one assignment key"
	case primary == nil || primary.node == 0 || primary.corrupt:
		return "the channel runs nowhere"
	case primary.node == pk.node:
		return "the node owns the channel"
	case !live || pk.createRev < ne.createRev:
		return "the destination is gone"
	case !ne.serving():
		return "the destination is not serving"
	case !ne.sess.Prepare:
		return "the destination no longer advertises Prepare"
	}
	if _, owned := r.owner(primary); !owned {
		return "the source is gone (failover is cold)"
	}
	switch primary.info.State {
	case meta.Watched:
		return ""
	case meta.ToRelease, meta.Released:
		if pk.info.State == meta.Prepared {
			return ""
		}
		return "the source is releasing before the destination is prepared"
	}
	return fmt.Sprintf("the channel is %v on its node", primary.info.State)
}

// removePrepare deletes prepare key pk (CAS on its mod revision).
func (r *reconciler) removePrepare(pk *keyEntry, why string) *unit {
	node, ch, m := pk.node, pk.ch, r.c.m
	return &unit{
		ch:   ch,
		cmps: []kv.Cmp{kv.CmpModRevision(pk.key, kv.Equal, pk.modRev)},
		ops:  []kv.Op{kv.OpDelete(pk.key)},
		done: []func(int64){func(rev int64) {
			m.prepares.WithLabelValues("abandoned").Inc()
			r.log.Info("prepare request withdrawn", zap.String("channel", ch), zap.Int64("node", node),
				zap.Int64("revision", rev), zap.String("why", why))
		}},
	}
}

// prepareUnit starts a warm move of the channel of k (Watched on a live
// node) to node to: it creates prepare/<to>/<channel> as ToPrepare,
// comparing k's mod revision and that no request exists.
func (r *reconciler) prepareUnit(k *keyEntry, reg *regEntry, to int64, now time.Time) *unit {
	info := baseInfo(k.ch, reg, k)
	info.State, info.StartTime = meta.ToPrepare, now
	info.AssignRevision, info.Progress, info.Attempts, info.FailedNode, info.LastError = 0, 0, 0, 0, ""
	val, err := meta.EncodePrepareInfo(info)
	if err != nil {
		r.log.Error("cannot encode ToPrepare", zap.String("channel", k.ch), zap.Int64("node", to), zap.Error(err))
		return nil
	}
	key := meta.PrepareKey(to, k.ch)
	from, ch, m := k.node, k.ch, r.c.m
	return &unit{
		ch:   ch,
		cmps: []kv.Cmp{kv.CmpModRevision(k.key, kv.Equal, k.modRev), kv.CmpMissing(key)},
		ops:  []kv.Op{kv.OpPut(key, val)},
		done: []func(int64){func(rev int64) {
			m.prepares.WithLabelValues("started").Inc()
			r.log.Info("preparing channel on its next node", zap.String("channel", ch), zap.Int64("node", to),
				zap.Int64("from", from), zap.Int64("revision", rev))
		}},
	}
}

// prepareBackoff reports whether ch's last preparation failed too lately
// for a balance move to take it again (to any node: the policy does not
// know which nodes prepare). A placement of the channel forgets it.
func (r *reconciler) prepareBackoff(rt *chanRT, now time.Time) bool {
	if now.Before(rt.prepNotBefore) {
		r.wakeAt(rt.prepNotBefore, now)
		return true
	}
	return false
}

// canPrepare reports whether node id takes prepare requests.
func (r *reconciler) canPrepare(id int64) bool {
	ne, live := r.live(id)
	return live && ne.serving() && ne.sess.Prepare
}

// preparing counts the channels with a prepare request whose move has not
// reached its release yet: balance moves in flight.
func (r *reconciler) preparing() int {
	n := 0
	for ch := range r.v.prepares {
		if rt := r.chans[ch]; rt == nil || rt.target == 0 {
			n++
		}
	}
	return n
}
