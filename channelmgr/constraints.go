package channelmgr

import (
	"fmt"
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

// placeConstrained asks the policy where chs go, among the nodes in ok.
// Channels are grouped by their Require, and each group is offered only
// the nodes that meet it (constrained groups first, each seeing the
// placements of the groups before it), so a policy that ignores labels
// still places correctly; with no constraints it is one call, as before.
// An answer that is invalid (a node not offered, the Avoid node while
// another was offered) falls back to LeastLoaded for that group. got[i] is
// 0 for a channel that waits, and why[i] says why: no serving node meets
// its Require, or every one that does is quarantined (it then gets probes
// through the probe path, one at a time).
func (r *reconciler) placeConstrained(chs []Channel, ok, serving []int64, loads map[int64]*NodeLoad) (got []int64, why []string) {
	got, why = make([]int64, len(chs)), make([]string, len(chs))
	if len(chs) == 0 {
		return got, why
	}
	groups := map[string][]int{}
	for i, c := range chs {
		k := c.Require.String()
		groups[k] = append(groups[k], i)
	}
	keys := slices.Sorted(maps.Keys(groups))
	if keys[0] == "" { // unconstrained channels last: they may go anywhere
		keys = append(keys[1:], "")
	}
	// Working copies: a group's placements count for the groups after it.
	work := make(map[int64]*NodeLoad, len(ok))
	for _, id := range ok {
		nl := *loads[id]
		nl.Channels = slices.Clip(nl.Channels)
		work[id] = &nl
	}
	for _, k := range keys {
		idx := groups[k]
		req := chs[idx[0]]
		var offered []NodeLoad
		byID := map[int64]*NodeLoad{}
		for _, id := range ok {
			if work[id].Meets(req) {
				offered = append(offered, *work[id])
				byID[id] = work[id]
			}
		}
		if len(offered) == 0 {
			reason := "waiting: no serving node has the required labels " + k
			for _, id := range serving {
				if loads[id].Meets(req) {
					reason = fmt.Sprintf("waiting: every serving node with the required labels %s is quarantined", k)
					break
				}
			}
			for _, i := range idx {
				why[i] = reason
			}
			continue
		}
		gchs := make([]Channel, len(idx))
		for j, i := range idx {
			gchs[j] = chs[i]
		}
		g := r.policyPlace(gchs, offered)
		if !validPlacement(g, gchs, byID) {
			r.log.Error("policy returned an invalid placement; using least-loaded", zap.Int("channels", len(gchs)),
				zap.String("require", k))
			g = placeLeastLoaded(gchs, offered)
		}
		for j, i := range idx {
			got[i] = g[j]
			nl := work[g[j]]
			nl.Channels = append(nl.Channels, chs[i])
		}
	}
	return got, why
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
