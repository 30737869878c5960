package channelmgr

import (
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
)

// Measured load: a node may publish its channels' measured loads in
// load/<id> (nodewatch.Node.ReportLoad). A figure counts for a channel
// only when the report comes from the node its assignment key is on, and
// the last such figure is kept when the channel moves (until its new node
// reports). The policy sees it as the channel's Weight, in place of the
// spec's; a channel never measured keeps its spec's weight.

// minMeasured is the weight of a channel measured at 0: it still counts a
// little, and 0 would mean "unset" (1) to a policy.
const minMeasured = 1e-3

// applyLoad folds a load/<id> event into the view.
func (r *reconciler) applyLoad(kvp kv.KeyValue, put bool) {
	if !put {
		return // figures of channels stay their last measure
	}
	id, err := meta.ParseLoadKey(kvp.Key)
	if err != nil {
		r.bad("session", kvp.Key, kvp.ModRevision, err)
		return
	}
	rep, err := meta.DecodeLoadReport(kvp.Key, kvp.Value)
	if err != nil {
		r.bad("session", kvp.Key, kvp.ModRevision, err)
		return
	}
	for ch, l := range rep.Loads {
		if r.v.key(ch, meta.ChannelKey(id, ch)) != nil {
			r.v.measured[ch] = l
		}
	}
}

// weightOf is the weight the policy sees for registered channel ch: its
// last measured load, or its spec's weight.
func (r *reconciler) weightOf(ch string, reg *regEntry) float64 {
	if m, ok := r.v.measured[ch]; ok {
		return max(m, minMeasured)
	}
	return reg.spec.Weight
}
