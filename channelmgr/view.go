package channelmgr

import (
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
	keys     map[string]map[string]*keyEntry // channel -> key -> assignment
	paused   bool
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
	sess    meta.NodeSession
	lease   kv.LeaseID
	modRev  int64
	corrupt bool // live, but neither schedulable nor draining
}

func (n *nodeEntry) serving() bool  { return !n.corrupt && n.sess.State == meta.NodeServing }
func (n *nodeEntry) draining() bool { return !n.corrupt && n.sess.State == meta.NodeStopping }

// keyEntry is one assignment key: channel/<node>/<channel>, node 0 for
// channel/remaining/<channel>. A corrupt value is kept (the key still
// occupies the channel) and repaired conservatively.
type keyEntry struct {
	key     string
	node    int64
	ch      string
	info    meta.ChannelInfo
	modRev  int64
	corrupt bool
}

func newView() view {
	return view{
		registry: map[string]*regEntry{},
		nodes:    map[int64]*nodeEntry{},
		keys:     map[string]map[string]*keyEntry{},
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
			return
		}
		spec, err := meta.DecodeChannelSpec(key, kvp.Value)
		if err != nil {
			r.bad("registry", key, kvp.ModRevision, err)
			v.registry[ch] = &regEntry{spec: meta.ChannelSpec{Name: ch}, modRev: kvp.ModRevision, corrupt: true}
			return
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
		e := &nodeEntry{sess: sess, lease: kvp.Lease, modRev: kvp.ModRevision}
		if err != nil {
			r.bad("session", key, kvp.ModRevision, err)
			e.corrupt = true
		}
		v.nodes[id] = e
		r.nodeSeen(id, e)
	case strings.HasPrefix(key, meta.ChannelPrefix):
		node, ch, err := meta.ParseChannelKey(key)
		if err != nil {
			r.bad("channel", key, kvp.ModRevision, err)
			return
		}
		if !put {
			if m := v.keys[ch]; m != nil {
				delete(m, key)
				if len(m) == 0 {
					delete(v.keys, ch)
				}
			}
			return
		}
		e := &keyEntry{key: key, node: node, ch: ch, modRev: kvp.ModRevision}
		info, err := meta.DecodeChannelInfo(key, kvp.Value)
		if err != nil {
			r.bad("channel", key, kvp.ModRevision, err)
			e.corrupt = true
		} else {
			e.info = info
		}
		if v.keys[ch] == nil {
			v.keys[ch] = map[string]*keyEntry{}
		}
		v.keys[ch][key] = e
	case key == meta.BalancePausedKey:
		v.paused = put
	}
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

// nodeSeen records what outlives a node's session key: its TTL.
func (r *reconciler) nodeSeen(id int64, e *nodeEntry) {
	rt := r.node(id)
	if e.sess.TTL > 0 {
		rt.ttl = e.sess.TTL
	}
}

// nodeGone handles a session key that vanished. If we did not evict the
// node, the key may have been deleted by hand while the lease (and the
// node) lives on: the next pass revokes the lease, and if that succeeds the
// node is fenced one TTL later, like an eviction.
func (r *reconciler) nodeGone(id int64, old *nodeEntry) {
	rt := r.node(id)
	r.log.Info("node gone", zap.Int64("node", id), zap.Int64("revision", r.v.rev))
	if rt.evicted.IsZero() && old.lease != kv.NoLease {
		rt.revokeLease = old.lease
	}
}

// nodeRT is what the leader remembers of a node beyond its session key.
type nodeRT struct {
	ttl time.Duration
	// evicted is when we revoked the node's lease (zero: never);
	// fenceUntil is when the node has certainly stopped afterwards.
	evicted    time.Time
	fenceUntil time.Time
	// revokeLease is a lease to revoke because the session key vanished
	// without our eviction (NoLease: nothing to do).
	revokeLease kv.LeaseID
	waitLogged  bool
}

func (r *reconciler) node(id int64) *nodeRT {
	rt := r.nodes[id]
	if rt == nil {
		rt = &nodeRT{}
		r.nodes[id] = rt
	}
	return rt
}
