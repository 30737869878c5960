package channelmgr

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"go.uber.org/zap"
)

// Node health keeps work off a node that keeps failing. It is leader memory
// only: it decides where channels go, never whether a channel may leave a
// node, so nothing in it is needed for safety. A new leader rebuilds it
// conservatively from the store: every channel whose last attempt failed
// (Attempts > 0, FailedNode) counts one failure against that node, and a
// published quarantine (control/quarantine/<id>) is adopted as it stands.
//
// A node is healthy, quarantined (until a time on the clock: no placements
// and no balance moves onto it) or probing (its quarantine ran out: it may
// take one channel at a time, and the first success makes it healthy; a
// failure quarantines it again for twice as long).

// nodeHealth is what the leader remembers of one node's attempts.
type nodeHealth struct {
	// failed holds the channels whose Watch failed (or timed out) on the
	// node since its last success: distinct channels, so that one channel
	// that fails everywhere does not quarantine every node.
	failed  map[string]bool
	failRev int64 // mod revision of the key that showed the latest failure
	// releaseFails counts Releases that failed since the node's last
	// successful Release; a Watch success does not clear it.
	releaseFails int
	reason       string
	quarantines  int       // since the last success: the backoff exponent
	since        time.Time // when the current quarantine began
	until        time.Time // zero: not quarantined
	probeLogged  bool
}

type healthState int

const (
	healthy healthState = iota
	quarantined
	probing
)

func (h *nodeHealth) state(now time.Time) healthState {
	switch {
	case h == nil || h.until.IsZero():
		return healthy
	case now.Before(h.until):
		return quarantined
	}
	return probing
}

func (r *reconciler) healthOf(id int64) *nodeHealth {
	h := r.health[id]
	if h == nil {
		h = &nodeHealth{failed: map[string]bool{}}
		r.health[id] = h
	}
	return h
}

// quarantineWait is the quarantine after the n-th one in a row.
func (c *config) quarantineWait(n int) time.Duration {
	d := c.quarantineBase
	for i := 1; i < n && d < c.quarantineMax; i++ {
		d *= 2
	}
	return min(d, c.quarantineMax)
}

// observeHealth reads what the key of ch says about its nodes: a new failed
// attempt (Attempts and FailedNode changed, or a WatchFailure answer) counts
// against FailedNode, a ReleaseFailure against the key's node, and a Watched or Released answer
// written after the node's latest failure is a success.
func (r *reconciler) observeHealth(rt *chanRT, k *keyEntry, now time.Time) {
	if k == nil || k.corrupt {
		return
	}
	info := k.info
	switch {
	case info.Attempts == 0:
		rt.failAttempts, rt.failNode = 0, 0
	case info.FailedNode != 0 && (info.Attempts != rt.failAttempts || info.FailedNode != rt.failNode):
		rt.failAttempts, rt.failNode = info.Attempts, info.FailedNode
		r.noteFailure(info.FailedNode, k.ch, k.modRev, info.LastError, now)
	}
	if k.node == 0 {
		return
	}
	switch info.State {
	case meta.WatchFailure:
		// Count it now rather than when our release shows it in Attempts:
		// a node failing a batch is capped at once (see nodeCaps). The
		// failed set makes the later count of the same failure a no-op.
		if rt.watchFailRev != k.modRev {
			rt.watchFailRev = k.modRev
			r.noteFailure(k.node, k.ch, k.modRev, info.LastError, now)
		}
	case meta.ReleaseFailure:
		if rt.releaseFailRev != k.modRev {
			rt.releaseFailRev = k.modRev
			h := r.healthOf(k.node)
			h.releaseFails++
			h.failRev = max(h.failRev, k.modRev)
			r.noteReleaseFailure(k.node, h, "release failed: "+info.LastError, now)
		}
	case meta.Watched, meta.Released:
		h := r.health[k.node]
		if h == nil || k.modRev <= h.failRev {
			return
		}
		if _, live := r.owner(k); !live {
			return
		}
		if info.State == meta.Watched {
			clear(h.failed)
		} else if info.Attempts == 0 {
			h.releaseFails = 0 // a plain Release (not of a failed attempt) worked
		}
		if len(h.failed) == 0 && h.releaseFails == 0 {
			r.healthy(k.node, h, fmt.Sprintf("%v answered for %s at revision %d", info.State, k.ch, k.modRev))
		}
	}
}

// noteFailure counts a failed Watch (or timeout) of ch on node id.
func (r *reconciler) noteFailure(id int64, ch string, rev int64, reason string, now time.Time) {
	if reason == "" {
		reason = "watch failed"
	}
	h := r.healthOf(id)
	h.failed[ch] = true
	h.failRev = max(h.failRev, rev)
	if h.state(now) != quarantined {
		h.reason = reason // keep the reason the quarantine was published with
	}
	switch h.state(now) {
	case probing:
		r.quarantine(id, h, now, "probe failed: "+reason)
	case healthy:
		if len(h.failed) >= r.cfg.quarantineAfter {
			r.quarantine(id, h, now, fmt.Sprintf("%d channels failed in a row, last: %s", len(h.failed), reason))
		}
	}
}

// noteReleaseFailure quarantines a node whose Release failed: the failure
// evicts it (see decidePrimary), and its next incarnation (a new ID with
// the same address) inherits the quarantine, so a node whose Releases keep
// failing is not loaded again at once only to be evicted again.
func (r *reconciler) noteReleaseFailure(id int64, h *nodeHealth, reason string, now time.Time) {
	h.reason = reason
	if h.state(now) != quarantined {
		r.quarantine(id, h, now, reason)
	}
	if ne := r.v.nodes[id]; ne != nil && !ne.corrupt && ne.sess.Addr != "" {
		r.byAddr[ne.sess.Addr] = h
	}
}

func (r *reconciler) quarantine(id int64, h *nodeHealth, now time.Time, reason string) {
	h.quarantines++
	d := r.cfg.quarantineWait(h.quarantines)
	h.since, h.until, h.probeLogged = now, now.Add(d), false
	h.reason = reason
	r.c.m.quarantines.Inc()
	r.log.Warn("node quarantined: no channels or balance moves go to it until it recovers",
		zap.Int64("node", id), zap.String("reason", reason), zap.Int("failures", len(h.failed)+h.releaseFails),
		zap.Int("quarantines", h.quarantines), zap.Duration("for", d), zap.Time("until", h.until))
}

// healthy forgets a node's failures.
func (r *reconciler) healthy(id int64, h *nodeHealth, why string) {
	if !h.until.IsZero() {
		r.log.Info("node left quarantine", zap.Int64("node", id), zap.String("reason", why),
			zap.Int("quarantines", h.quarantines))
	}
	delete(r.health, id)
	for addr, ah := range r.byAddr {
		if ah == h {
			delete(r.byAddr, addr)
		}
	}
}

// lift ends a node's quarantine on an operator's request.
func (r *reconciler) lift(id int64) {
	h := r.health[id]
	if h == nil || h.until.IsZero() {
		return
	}
	r.healthy(id, h, "lifted by an operator (quarantine key deleted)")
}

// inherit gives a newly seen node ID the release quarantine of an earlier
// incarnation with the same address that is no longer live.
func (r *reconciler) inherit(id int64, e *nodeEntry) {
	if e.corrupt || e.sess.Addr == "" || r.health[id] != nil {
		return
	}
	h := r.byAddr[e.sess.Addr]
	if h == nil {
		return
	}
	for old, oh := range r.health {
		if oh == h && old != id {
			if _, live := r.live(old); live {
				return // two live nodes share the address: not an incarnation
			}
		}
	}
	c := *h
	c.failed = maps.Clone(h.failed)
	r.health[id] = &c
	r.byAddr[e.sess.Addr] = &c
	r.log.Warn("node inherits the quarantine of an earlier session with its address",
		zap.Int64("node", id), zap.String("addr", e.sess.Addr), zap.String("reason", c.reason), zap.Time("until", c.until))
}

// adopt takes over a quarantine published by an earlier leader, seen when
// listing the root.
func (r *reconciler) adopt(id int64, q meta.Quarantine) {
	h := r.healthOf(id)
	if !h.until.IsZero() {
		return
	}
	h.reason, h.quarantines, h.since, h.until = q.Reason, max(q.Quarantines, 1), q.Since, q.Until
	if h.until.IsZero() {
		h.until = q.Since
	}
	r.log.Info("adopted a published quarantine", zap.Int64("node", id), zap.String("reason", q.Reason),
		zap.Time("until", q.Until))
}

// nodeCaps sorts the serving nodes for placement and balance: ok takes load
// as usual, probe holds nodes that may take exactly one channel now (their
// quarantine ran out, or they failed since their last success, and nothing
// is starting on them). Quarantined nodes, and
// probing nodes with a probe in flight, are in neither. When no serving
// node is healthy, every serving node is ok: trying a node that failed
// beats holding every channel.
func (r *reconciler) nodeCaps(serving []int64, now time.Time) (ok, probe []int64) {
	var busy map[int64]bool
	for _, id := range serving {
		h := r.health[id]
		switch h.state(now) {
		case healthy:
			if h == nil || (len(h.failed) == 0 && h.releaseFails == 0) {
				ok = append(ok, id)
				break
			}
			// Failed lately, not yet quarantined: one channel at a time
			// until it succeeds, so that a node failing some of its
			// Watches is not handed a batch of them.
			if busy == nil {
				busy = r.probesInFlight()
			}
			if !busy[id] {
				probe = append(probe, id)
			}
		case probing:
			if busy == nil {
				busy = r.probesInFlight()
			}
			if !busy[id] {
				probe = append(probe, id)
			}
			if !h.probeLogged {
				h.probeLogged = true
				r.log.Info("quarantine ran out: the node may take one channel (a probe)", zap.Int64("node", id),
					zap.String("reason", h.reason))
			}
		}
	}
	if len(ok) == 0 {
		return serving, nil
	}
	return ok, probe
}

// probesInFlight returns the nodes that have a channel starting on them
// (ToWatch or WatchFailure, placed and not yet visible, or a balance move
// on its way to them).
func (r *reconciler) probesInFlight() map[int64]bool {
	busy := map[int64]bool{}
	for _, rt := range r.chans {
		if rt.target != 0 {
			busy[rt.target] = true
		}
		if rt.placedOn != 0 && rt.pendingRev > r.v.rev {
			busy[rt.placedOn] = true
		}
	}
	for _, keys := range r.v.keys {
		for _, k := range keys {
			if k.node != 0 && !k.corrupt && (k.info.State == meta.ToWatch || k.info.State == meta.WatchFailure) {
				busy[k.node] = true
			}
		}
	}
	return busy
}

// mayTake reports whether a placement may go to node id (a balance move's
// target): any node not in quarantine.
func (r *reconciler) mayTake(id int64, now time.Time) bool {
	return r.health[id].state(now) != quarantined
}

// healthGauge and publish: the quarantine keys mirror the leader's memory.
// Each pass, a live node that is quarantined or probing has its key (put
// under the guard, CAS on what the view holds), and a key of a node that
// is healthy or gone is deleted. An operator deletes a key to lift the
// quarantine (see Unquarantine): the leader sees the delete of a key it
// still wants and forgets the node's failures.
func (r *reconciler) publishHealth(p *plan, now time.Time) {
	n := 0
	for _, id := range slices.Sorted(maps.Keys(r.health)) {
		h := r.health[id]
		if h.until.IsZero() {
			continue
		}
		if _, live := r.live(id); !live {
			continue
		}
		n++
		q := meta.Quarantine{Node: id, Reason: h.reason, Failures: len(h.failed) + h.releaseFails,
			Quarantines: h.quarantines, Since: h.since, Until: h.until}
		cur, ok := r.v.quarantine[id]
		if ok && !cur.corrupt && cur.q.Until.Equal(q.Until) && cur.q.Reason == meta.TruncateError(q.Reason) {
			continue
		}
		val, err := meta.EncodeQuarantine(q)
		if err != nil {
			continue
		}
		key := meta.QuarantineKey(id)
		u := &unit{ch: key, ops: []kv.Op{kv.OpPut(key, val)}}
		if ok {
			u.cmps = []kv.Cmp{kv.CmpModRevision(key, kv.Equal, cur.modRev)}
		} else {
			u.cmps = []kv.Cmp{kv.CmpMissing(key)}
		}
		if !r.ch(key).pending(r.v.rev, now) {
			p.add(u)
		}
	}
	for id, cur := range r.v.quarantine {
		h := r.health[id]
		_, live := r.live(id)
		if live && h != nil && !h.until.IsZero() {
			continue
		}
		key := meta.QuarantineKey(id)
		if !r.ch(key).pending(r.v.rev, now) {
			p.add(&unit{ch: key, cmps: []kv.Cmp{kv.CmpModRevision(key, kv.Equal, cur.modRev)}, ops: []kv.Op{kv.OpDelete(key)}})
		}
	}
	r.c.m.quarantined.Set(float64(n))
}

// Unquarantine deletes node id's quarantine key: the leader, seeing the key
// it published go, forgets the node's failures and lets it take load again
// (it quarantines the node anew if it keeps failing). Idempotent: a node
// that is not quarantined is left as it is.
func Unquarantine(ctx context.Context, b kv.KV, id int64) error {
	if err := meta.ValidateNodeID(id); err != nil {
		return fmt.Errorf("channelmgr: unquarantine: %w", err)
	}
	if _, _, err := kv.Delete(ctx, b, meta.QuarantineKey(id)); err != nil {
		return fmt.Errorf("channelmgr: unquarantine node %d: %w", id, err)
	}
	return nil
}

// Quarantined returns the quarantines the leader published, by node ID. A
// key whose value does not decode is returned with only Node set and its
// Reason saying so.
func Quarantined(ctx context.Context, b kv.KV) (map[int64]meta.Quarantine, error) {
	items, _, err := b.List(ctx, meta.QuarantinePrefix)
	if err != nil {
		return nil, fmt.Errorf("channelmgr: quarantined: %w", err)
	}
	out := make(map[int64]meta.Quarantine, len(items))
	for _, it := range items {
		id, err := meta.ParseQuarantineKey(it.Key)
		if err != nil {
			continue
		}
		q, err := meta.DecodeQuarantine(it.Key, it.Value)
		if err != nil {
			q = meta.Quarantine{Node: id, Reason: err.Error()}
		}
		out[id] = q
	}
	return out, nil
}
