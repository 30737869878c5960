package channelmgr

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/session"
)

// StopCheck is MayStop's answer about one node, read at Revision.
type StopCheck struct {
	Node int64
	// OK is true when stopping the node now leaves no channel without a
	// running owner beyond its own planned handoffs; Reason says why not.
	OK     bool
	Reason string
	// Channels is the number of assignment keys on the node (any state).
	Channels int
	// Waiting is the registered channels, on any node, that have no running
	// owner now (not Watched on a live session: moving, placed but not yet
	// running, remaining, unassigned, on a gone node) or that run on
	// another stopping node and wait for their move.
	Waiting int
	// Targets is the live serving nodes, other than Node and not
	// quarantined, that could take the node's channels.
	Targets  int
	Revision int64
}

// MayStop says whether node nodeID may be stopped now (a graceful stop, a
// restart in a rolling upgrade) without leaving any channel without a
// running owner for longer than its own handoff: every registered channel
// runs (Watched on a live node's current session) and none waits to move
// off a stopping node, the node itself is not still draining, and if it
// holds channels some other serving, unquarantined node can take them. A
// deploy tool gates each restart on it; it reads the root once (one List at
// one revision), so call it from an operator's or a deploy tool's loop, not
// a hot path. It is advice at that revision: the cluster can change right
// after.
//
// Errors: meta.ErrInvalidNodeID; session.ErrNodeNotFound when the node has
// no session key (unknown ID, or its lease is gone); or the backend's error.
func MayStop(ctx context.Context, b kv.KV, nodeID int64) (StopCheck, error) {
	c := StopCheck{Node: nodeID}
	if err := meta.ValidateNodeID(nodeID); err != nil {
		return c, fmt.Errorf("channelmgr: may stop: %w", err)
	}
	items, rev, err := b.List(ctx, "")
	if err != nil {
		return c, fmt.Errorf("channelmgr: may stop node %d: %w", nodeID, err)
	}
	c.Revision = rev
	type sess struct {
		s         meta.NodeSession
		createRev int64
		ok        bool
	}
	nodes := map[int64]sess{}
	quarantined := map[int64]bool{}
	registered := map[string]bool{}
	keys := map[string][]kv.KeyValue{}
	for _, it := range items {
		switch {
		case strings.HasPrefix(it.Key, meta.NodeSessionPrefix):
			id, err := meta.ParseNodeSessionKey(it.Key)
			if err != nil {
				continue
			}
			s, err := meta.DecodeNodeSession(it.Key, it.Value)
			nodes[id] = sess{s: s, createRev: it.CreateRevision, ok: err == nil}
		case strings.HasPrefix(it.Key, meta.QuarantinePrefix):
			if id, err := meta.ParseQuarantineKey(it.Key); err == nil {
				quarantined[id] = true
			}
		case strings.HasPrefix(it.Key, meta.RegistryPrefix):
			if ch, err := meta.ParseRegistryKey(it.Key); err == nil {
				registered[ch] = true
			}
		case strings.HasPrefix(it.Key, meta.ChannelPrefix):
			if _, ch, err := meta.ParseChannelKey(it.Key); err == nil {
				keys[ch] = append(keys[ch], it)
			}
		}
	}
	self, ok := nodes[nodeID]
	if !ok {
		return c, fmt.Errorf("%w: node %d", session.ErrNodeNotFound, nodeID)
	}
	for id, n := range nodes {
		if id != nodeID && n.ok && n.s.State == meta.NodeServing && !quarantined[id] {
			c.Targets++
		}
	}
	var examples []string
	for ch, ks := range keys {
		for _, k := range ks {
			if id, _, _ := meta.ParseChannelKey(k.Key); id == nodeID {
				c.Channels++
			}
		}
		if !registered[ch] {
			continue
		}
		if why := notRunning(ks, nodeID, func(id int64) (meta.NodeSession, int64, bool) {
			n, ok := nodes[id]
			return n.s, n.createRev, ok && n.ok
		}); why != "" {
			c.Waiting++
			examples = append(examples, ch+" "+why)
		}
	}
	for ch := range registered {
		if len(keys[ch]) == 0 {
			c.Waiting++
			examples = append(examples, ch+" is not assigned yet")
		}
	}
	slices.Sort(examples)
	switch {
	case c.Waiting > 0:
		c.Reason = fmt.Sprintf("%d channels have no running owner now or wait to move (%s): let them settle first",
			c.Waiting, strings.Join(examples[:min(3, len(examples))], "; "))
	case self.ok && self.s.State != meta.NodeServing && c.Channels > 0:
		c.Reason = fmt.Sprintf("node %d is %s and still holds %d channels", nodeID, self.s.State, c.Channels)
	case c.Channels > 0 && c.Targets == 0:
		c.Reason = fmt.Sprintf("no other serving node can take node %d's %d channels (every other node is stopping, quarantined or gone): they would wait as remaining",
			nodeID, c.Channels)
	default:
		c.OK = true
	}
	return c, nil
}

// notRunning says why a registered channel with keys ks does not count as
// running and settled ("" when it does): it must have exactly one key,
// Watched, on a live node's current session, and that node, unless it is
// the one being asked about, must be serving.
func notRunning(ks []kv.KeyValue, asked int64, node func(int64) (meta.NodeSession, int64, bool)) string {
	if len(ks) != 1 {
		return fmt.Sprintf("has %d keys", len(ks))
	}
	k := ks[0]
	id, _, _ := meta.ParseChannelKey(k.Key)
	if id == 0 {
		return "is remaining (no node)"
	}
	info, err := meta.DecodeChannelInfo(k.Key, k.Value)
	if err != nil {
		return fmt.Sprintf("has a corrupt assignment on node %d", id)
	}
	s, createRev, live := node(id)
	switch {
	case !live || s.State == meta.NodeEvicted || k.CreateRevision < createRev:
		return fmt.Sprintf("is on node %d, which is gone", id)
	case info.State != meta.Watched:
		return fmt.Sprintf("is %v on node %d", info.State, id)
	case id != asked && s.State != meta.NodeServing:
		return fmt.Sprintf("waits to move off stopping node %d", id)
	}
	return ""
}
