package channelmgr

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"go.uber.org/zap"
)

// view is the leader's picture of the root at revision rev, folded from one
// List and the watch that follows it. Only the decision goroutine touches it.
type view struct {
	rev      int64
	registry map[string]*regEntry
	nodes    map[int64]*nodeEntry
	// keys holds each channel's assignment keys, usually one: a slice,
	// not a map, costs 8 bytes a key where a map costs hundreds.
	keys map[string][]*keyEntry
	// prepares holds each channel's warm-handoff requests
	// (prepare/<node>/<channel>, see prepare.go), usually none.
	prepares map[string][]*keyEntry

	paused bool
	// quarantine is control/quarantine/<id>: what the leader published.
	quarantine map[int64]*quarantineEntry
	// measured is each channel's last measured load from its node's
	// load/<id> report (see measured.go).
	measured map[string]float64
}

// quarantineEntry is one control/quarantine/<id> key.
type quarantineEntry struct {
	q       meta.Quarantine
	modRev  int64
	corrupt bool
}

// regEntry is registry/<channel>. A corrupt value still means "registered"
// (deleting a channel's assignment because its spec does not parse would
// lose it), but a channel with no key cannot be placed without a spec.
type regEntry struct {
	spec    meta.ChannelSpec
	modRev  int64
	corrupt bool
}

// nodeEntry is session/node/<id>: the node is live while it exists.
type nodeEntry struct {
	sess      meta.NodeSession
	lease     kv.LeaseID
	modRev    int64
	createRev int64 // the incarnation: keys created before it are a dead node's
	corrupt   bool  // live, but neither schedulable nor draining
}

func (n *nodeEntry) serving() bool  { return !n.corrupt && n.sess.State == meta.NodeServing }
func (n *nodeEntry) draining() bool { return !n.corrupt && n.sess.State == meta.NodeStopping }
func (n *nodeEntry) evicted() bool  { return !n.corrupt && n.sess.State == meta.NodeEvicted }

// keyEntry is one assignment key: channel/<node>/<channel>, node 0 for
// channel/remaining/<channel>. A corrupt value is kept (the key still
// occupies the channel) and repaired conservatively.
type keyEntry struct {
	key       string
	node      int64
	ch        string
	info      meta.ChannelInfo
	modRev    int64
	createRev int64
	corrupt   bool
}

// key returns channel ch's assignment key (nil: not in the view).
func (v *view) key(ch, key string) *keyEntry {
	for _, e := range v.keys[ch] {
		if e.key == key {
			return e
		}
	}
	return nil
}

// putKey adds or replaces e among its channel's keys.
func (v *view) putKey(ch string, e *keyEntry) {
	ks := v.keys[ch]
	for i, old := range ks {
		if old.key == e.key {
			ks[i] = e
			return
		}
	}
	v.keys[ch] = append(ks, e)
}

// dropKey removes key from channel ch's keys.
func (v *view) dropKey(ch, key string) {
	ks := v.keys[ch]
	for i, e := range ks {
		if e.key == key {
			ks = slices.Delete(ks, i, i+1)
			break
		}
	}
	if len(ks) == 0 {
		delete(v.keys, ch)
		return
	}
	v.keys[ch] = ks
}

func newView() view {
	return view{
		registry: map[string]*regEntry{},
		nodes:    map[int64]*nodeEntry{},
		keys:     map[string][]*keyEntry{},
		prepares: map[string][]*keyEntry{},

		quarantine: map[int64]*quarantineEntry{},
		measured:   map[string]float64{},
	}
}

// apply folds one event into the view and tells the reconciler about node
// deaths (gone) and corrupt keys (bad).
func (r *reconciler) apply(ev kv.Event) {
	kvp := ev.KV
	key := kvp.Key
	put := ev.Type == kv.EventPut
	v := &r.v
	if !put {
		delete(r.badSeen, key)
	}
	switch {
	case strings.HasPrefix(key, meta.RegistryPrefix):
		ch, err := meta.ParseRegistryKey(key)
		if err != nil {
			r.bad("registry", key, kvp.ModRevision, err)
			return
		}
		if !put {
			delete(v.registry, ch)
			delete(v.measured, ch)
			return
		}
		spec, err := meta.DecodeChannelSpec(key, kvp.Value)
		if err != nil {
			r.bad("registry", key, kvp.ModRevision, err)
			v.registry[ch] = &regEntry{spec: meta.ChannelSpec{Name: ch}, modRev: kvp.ModRevision, corrupt: true}
			return
		}
		if spec.Name == ch {
			spec.Name = ch // one string, not two
		}
		for _, k := range v.keys[ch] {
			k.info.Vchannel = share(k.info.Vchannel, spec.Vchannel)
		}
		v.registry[ch] = &regEntry{spec: spec, modRev: kvp.ModRevision}
	case strings.HasPrefix(key, meta.NodeSessionPrefix):
		id, err := meta.ParseNodeSessionKey(key)
		if err != nil {
			r.bad("session", key, kvp.ModRevision, err)
			return
		}
		if !put {
			if old, ok := v.nodes[id]; ok {
				delete(v.nodes, id)
				r.nodeGone(id, old)
			}
			return
		}
		sess, err := meta.DecodeNodeSession(key, kvp.Value)
		e := &nodeEntry{sess: sess, lease: kvp.Lease, modRev: kvp.ModRevision, createRev: kvp.CreateRevision}
		if err != nil {
			r.bad("session", key, kvp.ModRevision, err)
			e.corrupt = true
		}
		v.nodes[id] = e
		r.nodeSeen(id, e)
		r.inherit(id, e)
	case strings.HasPrefix(key, meta.ChannelPrefix):
		node, ch, err := meta.ParseChannelKey(key)
		if err != nil {
			r.bad("channel", key, kvp.ModRevision, err)
			return
		}
		if !put {
			v.dropKey(ch, key)
			return
		}
		e := &keyEntry{key: key, node: node, ch: ch, modRev: kvp.ModRevision, createRev: kvp.CreateRevision}
		info, err := meta.DecodeChannelInfo(key, kvp.Value)
		if err != nil {
			r.bad("channel", key, kvp.ModRevision, err)
			e.corrupt = true
		} else {
			info.Name = ch // equal (DecodeChannelInfo checks): one string, not two
			if reg := v.registry[ch]; reg != nil {
				info.Vchannel = share(info.Vchannel, reg.spec.Vchannel)
			}
			e.info = info
		}
		v.putKey(ch, e)
	case key == meta.CoordinatorKey:
		// Our own key: the session's monitor repairs an overwrite; count it.
		if put {
			if _, err := meta.DecodeCoordSession(key, kvp.Value); err != nil {
				r.bad("session", key, kvp.ModRevision, err)
			} else if kvp.Lease == kv.NoLease {
				r.bad("session", key, kvp.ModRevision, fmt.Errorf("%w: %s: on no lease", meta.ErrCorruptValue, key))
			}
		}
	case strings.HasPrefix(key, meta.QuarantinePrefix):
		id, err := meta.ParseQuarantineKey(key)
		if err != nil {
			r.bad("control", key, kvp.ModRevision, err)
			return
		}
		if !put {
			if _, ok := v.quarantine[id]; ok {
				delete(v.quarantine, id)
				r.lift(id)
			}
			return
		}
		q, err := meta.DecodeQuarantine(key, kvp.Value)
		if err != nil {
			// Rewritten by the leader's next pass, or deleted if the node
			// is healthy.
			r.bad("control", key, kvp.ModRevision, err)
			v.quarantine[id] = &quarantineEntry{modRev: kvp.ModRevision, corrupt: true}
			return
		}
		v.quarantine[id] = &quarantineEntry{q: q, modRev: kvp.ModRevision}
	case strings.HasPrefix(key, meta.PreparePrefix):
		r.applyPrepare(kvp, put)
	case strings.HasPrefix(key, meta.LoadPrefix):
		r.applyLoad(kvp, put)
	case key == meta.BalancePausedKey:
		// Present means paused, whatever the value: pausing balance never
		// endangers safety or failover. A value that is neither empty (as
		// PauseBalance writes) nor a JSON object is reported.
		v.paused = put
		if put && !validFlag(kvp.Value) {
			r.bad("control", key, kvp.ModRevision, fmt.Errorf("%w: %s: %q is not a balance-pause flag (balancing stays paused)",
				meta.ErrCorruptValue, key, truncate(kvp.Value, 64)))
		}
	}
}

// share returns spec when it holds the same bytes as b, else b: an
// assignment's Vchannel is a copy of its spec's, and keeping one copy of
// each payload halves what the view holds of them. Neither is ever
// modified in place.
func share(b, spec json.RawMessage) json.RawMessage {
	if len(b) > 0 && bytes.Equal(b, spec) {
		return spec
	}
	return b
}

// validFlag reports whether v is a well-formed control flag value: empty,
// or a JSON object.
func validFlag(v []byte) bool {
	if len(v) == 0 {
		return true
	}
	var obj map[string]any
	return json.Unmarshal(v, &obj) == nil
}

func truncate(b []byte, n int) []byte {
	if len(b) <= n {
		return b
	}
	return b[:n]
}

// bad logs and counts a key that does not parse, once per revision of it.
func (r *reconciler) bad(prefix, key string, rev int64, err error) {
	if r.badSeen[key] == rev {
		return
	}
	r.badSeen[key] = rev
	r.c.m.corrupt.WithLabelValues(prefix).Inc()
	r.log.Warn("skipping corrupt key", zap.String("key", key), zap.Int64("revision", rev), zap.Error(err))
}

// nodeSeen records what outlives a node's session key: its TTL, the
// incarnation (session key create revision) and when we first saw it, and
// an eviction mark (ours, or a predecessor's).
func (r *reconciler) nodeSeen(id int64, e *nodeEntry) {
	rt := r.node(id)
	if e.sess.TTL > 0 {
		rt.ttl = e.sess.TTL
		if e.sess.TTL > r.fallbackTTL() {
			r.log.Warn("node advertises a session TTL longer than WithNodeTTL: using it for this node, and for nodes whose TTL is unknown; raise WithNodeTTL to at least every node's TTL",
				zap.Int64("node", id), zap.Duration("node_ttl", e.sess.TTL), zap.Duration("configured", r.cfg.nodeTTL))
			r.maxTTL = e.sess.TTL
		}
	}
	now := r.clock.Now()
	if rt.incRev != e.createRev {
		if rt.incRev != 0 {
			r.log.Warn("node ID has a new session: keys made for the earlier one are a dead node's",
				zap.Int64("node", id), zap.Int64("create_revision", e.createRev), zap.Int64("was", rt.incRev))
		}
		rt.incRev, rt.incSeen = e.createRev, now
		rt.evicted, rt.waitLogged = time.Time{}, false // a new node; the old one's keys still wait
	}
	if e.evicted() && rt.evicted.IsZero() {
		r.markGone(id, rt, e.lease, now, "session marked evicted")
	}
}

// nodeGone handles a session key that vanished, for whatever reason: lease
// expiry, a revoke (ours, an ambiguous one, a deposed leader's late one, the
// store's own), or a delete by hand while the lease and the node live on.
// None of them proves the node has stopped, so its channels wait one node
// TTL from now, and until its lease is certainly gone (see revokeLeases).
func (r *reconciler) nodeGone(id int64, old *nodeEntry) {
	r.log.Info("node gone", zap.Int64("node", id), zap.Int64("revision", r.v.rev))
	r.markGone(id, r.node(id), old.lease, r.clock.Now(), "session key gone")
}

// markGone starts the wait before a node's channels may move: one node TTL
// from now at the earliest (never shortened, however often it is called),
// and not before lease (NoLease: none) is known to be gone.
func (r *reconciler) markGone(id int64, rt *nodeRT, lease kv.LeaseID, now time.Time, why string) {
	if rt.evicted.IsZero() {
		rt.evicted = now
	}
	if until := now.Add(r.nodeTTL(id)); until.After(rt.fenceUntil) {
		rt.fenceUntil = until
	}
	if lease != kv.NoLease && !rt.leaseGone[lease] {
		rt.revokeLease = lease
	}
	r.log.Debug("node no longer live", zap.Int64("node", id), zap.String("why", why),
		zap.Time("fence_until", rt.fenceUntil), zap.Int64("lease", int64(lease)))
}

// nodeRT is what the leader remembers of a node beyond its session key.
type nodeRT struct {
	ttl time.Duration
	// evicted is when we first saw the node evicted or gone (zero: never);
	// fenceUntil is when it has certainly stopped: one node TTL after the
	// last time we learned that its lease is gone, or that it must stop.
	evicted    time.Time
	fenceUntil time.Time
	// revokeLease is the node's lease, to revoke until the store says it
	// is gone (NoLease: nothing to do); leaseGone remembers leases the
	// store said are gone.
	revokeLease kv.LeaseID
	leaseGone   map[kv.LeaseID]bool
	// incRev is the create revision of the node's session key as last
	// seen, and incSeen when we first saw that incarnation.
	incRev     int64
	incSeen    time.Time
	waitLogged bool
}

func (r *reconciler) node(id int64) *nodeRT {
	rt := r.nodes[id]
	if rt == nil {
		rt = &nodeRT{}
		r.nodes[id] = rt
	}
	return rt
}
