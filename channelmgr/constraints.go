package channelmgr

import (
	"maps"
	"slices"

	"go.uber.org/zap"

	"github.com/chanwatch/chanwatch/meta"
)

// Constraints are enforced here, whatever the policy: a channel goes only
// to a node that carries every label of its Require. A channel no serving
// node may take waits in channel/remaining/ with the reason as its
// LastError (counted in chanwatch_coordinator_channels_unplaceable) and is
// placed on the pass that sees a suitable node.

// nodeLoad is node id as the policy sees it, with no channels yet: its
// capacity and labels from its session value.
func (r *reconciler) nodeLoad(id int64) *NodeLoad {
	nl := &NodeLoad{ID: id}
	if ne := r.v.nodes[id]; ne != nil && !ne.corrupt {
		nl.Capacity, nl.Labels = ne.sess.Capacity, ne.sess.Labels
	}
	return nl
}

// avoidAmong is the node a channel's placement avoids: avoid (the node its
// last attempt failed on), unless no other serving node may take the
// channel, in which case trying that node again beats waiting forever.
func (r *reconciler) avoidAmong(avoid int64, serving []int64, meets func(int64) bool) int64 {
	if avoid == 0 || slices.ContainsFunc(serving, func(id int64) bool { return id != avoid && meets(id) }) {
		return avoid
	}
	return 0
}

// placeConstrained asks the policy where chs go, among the nodes in ok (see
// placeGroups). An answer that is invalid (a node not offered, or not
// meeting the channel's Require, the Avoid node while another was offered)
// falls back to LeastLoaded for that group. got[i] is 0 for a channel that
// waits, and why[i] says why: no serving node meets its Require, or every
// one that does is quarantined (it then gets probes through the probe
// path, one at a time).
func (r *reconciler) placeConstrained(chs []Channel, ok, serving []int64, loads map[int64]*NodeLoad) (got []int64, why []string) {
	offered := make([]NodeLoad, 0, len(ok))
	for _, id := range ok {
		offered = append(offered, *loads[id])
	}
	got = placeGroups(chs, offered, func(gchs []Channel, nodes []NodeLoad) []int64 {
		g := r.policyPlace(gchs, nodes)
		if !validPlacement(g, gchs, byID(nodes)) {
			r.log.Error("policy returned an invalid placement; using least-loaded", zap.Int("channels", len(gchs)),
				zap.String("require", gchs[0].Require.String()))
			g = placeLeastLoaded(gchs, nodes)
		}
		return g
	})
	why = make([]string, len(chs))
	for i, id := range got {
		if id != 0 {
			continue
		}
		k := chs[i].Require.String()
		why[i] = "waiting: no serving node has the required labels " + k
		for _, id := range serving {
			if loads[id].Meets(chs[i]) {
				why[i] = "waiting: every serving node with the required labels " + k +
					" is quarantined or taking one channel at a time after failures"
				break
			}
		}
	}
	return got, why
}

func byID(nodes []NodeLoad) map[int64]*NodeLoad {
	m := make(map[int64]*NodeLoad, len(nodes))
	for i := range nodes {
		m[nodes[i].ID] = &nodes[i]
	}
	return m
}

// placeGroups places chs on nodes with place, one call per distinct
// Require: each group is offered only the nodes that meet it (constrained
// groups first, in the order of their labels, each seeing the placements
// of the groups before it; unconstrained channels last), so a policy that
// ignores labels still places correctly, and with no constraints it is one
// call, as before. place must answer with offered nodes. A channel whose
// group no node meets gets 0.
func placeGroups(chs []Channel, nodes []NodeLoad, place func([]Channel, []NodeLoad) []int64) []int64 {
	got := make([]int64, len(chs))
	if len(chs) == 0 {
		return got
	}
	groups := map[string][]int{}
	for i, c := range chs {
		k := c.Require.String()
		groups[k] = append(groups[k], i)
	}
	keys := slices.Sorted(maps.Keys(groups))
	if keys[0] == "" {
		keys = append(keys[1:], "")
	}
	if len(keys) == 1 && keys[0] == "" {
		return place(chs, nodes)
	}
	// Working copies: a group's placements count for the groups after it.
	work := make([]NodeLoad, len(nodes))
	at := make(map[int64]int, len(nodes))
	for i, n := range nodes {
		work[i] = n
		work[i].Channels = slices.Clip(n.Channels)
		at[n.ID] = i
	}
	for _, k := range keys {
		idx := groups[k]
		var offered []NodeLoad
		for _, n := range work {
			if n.Meets(chs[idx[0]]) {
				offered = append(offered, n)
			}
		}
		if len(offered) == 0 {
			continue
		}
		gchs := make([]Channel, len(idx))
		for j, i := range idx {
			gchs[j] = chs[i]
		}
		g := place(gchs, offered)
		for j, i := range idx {
			got[i] = g[j]
			if w, ok := at[g[j]]; ok {
				work[w].Channels = append(work[w].Channels, chs[i])
			}
		}
	}
	return got
}

// PlaceConstrained places chs on nodes with p as the coordinator does: one
// Place call per distinct Require, offering only the nodes that meet it,
// and LeastLoaded for a group whose answer is invalid (a node not offered
// or not meeting a Require; a panic counts as invalid). A channel no node
// meets gets 0. For tools and benchmarks that run a policy outside a
// Coordinator.
func PlaceConstrained(p Policy, chs []Channel, nodes []NodeLoad) []int64 {
	return placeGroups(chs, nodes, func(gchs []Channel, nodes []NodeLoad) (g []int64) {
		defer func() {
			if recover() != nil || !validPlacement(g, gchs, byID(nodes)) {
				g = placeLeastLoaded(gchs, nodes)
			}
		}()
		return p.Place(gchs, nodes)
	})
}

// waiting counts the channels with a reason to wait.
func waiting(why []string) int {
	n := 0
	for _, w := range why {
		if w != "" {
			n++
		}
	}
	return n
}

// waitChanged reports whether the remaining key src must be rewritten to
// show a new reason to wait.
func waitChanged(src *keyEntry, wait string) bool {
	return wait != "" && !src.corrupt && src.info.LastError != meta.TruncateError(wait)
}
