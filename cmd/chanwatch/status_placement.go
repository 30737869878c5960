package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/chanwatch/chanwatch/meta"
)

// placementStatus is what status shows of a node's capacity and labels, and
// the load on it (sum of its registered channels' weights).
type placementStatus struct {
	Capacity    float64           `json:"capacity"`
	Labels      map[string]string `json:"labels,omitempty"`
	Load        float64           `json:"load"`
	Utilisation float64           `json:"utilisation"`
}

// channelPlacement is a channel's weight and constraints from its spec.
type channelPlacement struct {
	Weight  float64 `json:"weight"`
	Require string  `json:"require,omitempty"`
	Spread  string  `json:"spread,omitempty"`
	// MeasuredLoad is the load its node last reported for it (load/<id>),
	// which counts in place of Weight.
	MeasuredLoad *float64 `json:"measured_load,omitempty"`
	// Waiting: the channel waits in remaining because no serving node may
	// take it (LastError says why).
	Waiting bool `json:"waiting,omitempty"`
}

func nodePlacement(s meta.NodeSession) placementStatus {
	return placementStatus{Capacity: s.EffectiveCapacity(), Labels: s.Labels.Map()}
}

// addPlacement fills weights, constraints and node loads (a channel's
// measured load, when its node reports one, in place of its weight).
func addPlacement(r *statusReport, nodes map[int64]*nodeStatus, specs map[string]meta.ChannelSpec, loads map[int64]map[string]float64) {
	for i := range r.Channels {
		c := &r.Channels[i]
		spec, ok := specs[c.Name]
		c.Weight = meta.DefaultWeight
		if ok {
			c.Weight, c.Require, c.Spread = spec.EffectiveWeight(), spec.Require.String(), spec.Spread
		}
		c.Waiting = c.Node == 0 && strings.HasPrefix(c.LastError, "waiting:")
		load := c.Weight
		if m, ok := loads[c.Node][c.Name]; ok && c.Node != 0 {
			c.MeasuredLoad, load = &m, m
		}
		if n := nodes[c.Node]; n != nil && c.Registered {
			n.Load += load
		}
	}
	for _, n := range nodes {
		n.Utilisation = n.Load / n.Capacity
	}
}

// waitingProblems names the channels that wait for a node that may take
// them.
func waitingProblems(r *statusReport) []string {
	var waiting []string
	reasons := map[string]bool{}
	for _, c := range r.Channels {
		if c.Waiting {
			waiting = append(waiting, c.Name)
			reasons[c.LastError] = true
		}
	}
	if len(waiting) == 0 {
		return nil
	}
	why := make([]string, 0, len(reasons))
	for r := range reasons {
		why = append(why, strings.TrimPrefix(r, "waiting: "))
	}
	slices.Sort(why)
	return []string{fmt.Sprintf("%d channel(s) wait for a node that may take them (%s): %s", len(waiting), abbrev(waiting), strings.Join(why, "; "))}
}

// usesPlacement reports whether any node or channel has a capacity,
// labels, a weight or constraints: only then does the table show them.
func usesPlacement(r *statusReport) bool {
	for _, n := range r.Nodes {
		if n.Capacity != meta.DefaultCapacity || len(n.Labels) > 0 {
			return true
		}
	}
	for _, c := range r.Channels {
		if c.Weight != meta.DefaultWeight || c.Require != "" || c.Spread != "" || c.MeasuredLoad != nil {
			return true
		}
	}
	return false
}

func nodePlacementColumns(rows [][]string, r *statusReport) [][]string {
	if !usesPlacement(r) {
		return rows
	}
	rows[0] = append(rows[0], "CAPACITY", "LOAD", "UTIL", "LABELS")
	for i, n := range r.Nodes {
		labels, _ := meta.NewLabels(n.Labels)
		rows[i+1] = append(rows[i+1], fmt.Sprintf("%g", n.Capacity), fmt.Sprintf("%g", n.Load),
			fmt.Sprintf("%.2f", n.Utilisation), orDash(labels.String()))
	}
	return rows
}

func channelPlacementColumns(rows [][]string, r *statusReport) [][]string {
	if !usesPlacement(r) {
		return rows
	}
	rows[0] = append(rows[0], "WEIGHT", "MEASURED", "REQUIRE", "SPREAD")
	for i, c := range r.Channels {
		measured := "-"
		if c.MeasuredLoad != nil {
			measured = fmt.Sprintf("%g", *c.MeasuredLoad)
		}
		rows[i+1] = append(rows[i+1], fmt.Sprintf("%g", c.Weight), measured, orDash(c.Require), orDash(c.Spread))
	}
	return rows
}
