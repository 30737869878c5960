package conformance

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/channelmgr"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/nodewatch"
)

// Placement by weight, capacity and labels (channelmgr.Weighted and the
// coordinator's enforcement of required labels).

// withPlacement gives a node a capacity and labels ("key=value"...).
func withPlacement(capacity float64, labels ...string) nodeOpt {
	return func(c *nodeCfg) {
		c.extra = append(c.extra, nodewatch.WithCapacity(capacity), nodewatch.WithLabels(meta.MustLabels(labels...)))
	}
}

// weightedCoord starts a coordinator with the Weighted policy and waits
// until it leads.
func (m *mep) weightedCoord() *mepCoord {
	m.t.Helper()
	mc := m.startCoord(channelmgr.WithPolicy(channelmgr.Weighted()))
	m.waitLeader(mc)
	return mc
}

// registerSpecs registers specs through the suite's handle.
func (m *mep) registerSpecs(specs ...meta.ChannelSpec) {
	m.t.Helper()
	for _, s := range specs {
		m.idempotent("Register("+s.Name+")", channelmgr.ErrAlreadyRegistered, func() error {
			return channelmgr.Register(m.ctx, m.b, s)
		})
	}
	m.sync()
}

// utilisation returns, per live node, the weights of its Watched channels
// over its capacity.
func (m *mep) utilisation(weight map[string]float64, capacity map[*mepNode]float64) map[int64]float64 {
	v := m.chk.View()
	procs := m.procByID()
	out := map[int64]float64{}
	for id := range v.Live {
		out[id] = 0
	}
	for ch, a := range v.Assign {
		if a.NodeID != 0 && a.Info.State == meta.Watched {
			out[a.NodeID] += weight[ch]
		}
	}
	for id := range out {
		c := 1.0
		if p := procs[id]; p != nil && capacity[p] > 0 {
			c = capacity[p]
		}
		out[id] /= c
	}
	return out
}

// maxOverMean is the largest utilisation over total load / total capacity.
func maxOverMean(load map[string]float64, caps map[int64]float64, util map[int64]float64) float64 {
	var total, capacity, hi float64
	for _, w := range load {
		total += w
	}
	for id, u := range util {
		capacity += caps[id]
		hi = math.Max(hi, u)
	}
	if total == 0 || capacity == 0 {
		return 1
	}
	return hi / (total / capacity)
}

func mepWeightedSpread(t *testing.T, m *mep) {
	caps := []float64{1, 2, 1}
	capOf := map[*mepNode]float64{}
	for _, c := range caps {
		capOf[m.startNode(withPlacement(c))] = c
	}
	m.weightedCoord()
	n := m.size(90, 36)
	weight := map[string]float64{}
	var specs []meta.ChannelSpec
	for i, ch := range names("weighted", n) {
		w := float64(1 + i%3) // 1, 2, 3
		weight[ch] = w
		specs = append(specs, meta.ChannelSpec{Name: ch, CollectionID: int64(1 + i%5), Weight: w})
	}
	m.registerSpecs(specs...)
	ratio := func() (float64, map[int64]float64) {
		util := m.utilisation(weight, capOf)
		byID := map[int64]float64{}
		for id, p := range m.procByID() {
			byID[id] = capOf[p]
		}
		return maxOverMean(weight, byID, util), util
	}
	// The balancer stops inside its own band (WeightedTolerance around the
	// mean, below as well as above), which a state under 1.10 may not yet
	// be: wait for the balancer to go quiet for a window, then judge the
	// spread. (Judging the first state under 1.10 failed on a loaded
	// machine, with the balancer's next round still to come.)
	hist, quietSince := -1, time.Time{}
	m.waitFor("the load to spread by capacity (max/mean utilisation <= 1.10) and the balancer to stop", func() string {
		if why := m.unsettled(); why != "" {
			return why
		}
		if h := m.historyLen(); h != hist {
			hist, quietSince = h, m.clock.Now()
		}
		if r, util := ratio(); r > 1.10 {
			return fmt.Sprintf("max/mean utilisation %.3f: %v", r, util)
		}
		if d := m.clock.Since(quietSince); d < m.stableWindow() {
			return fmt.Sprintf("no key written for %v of %v", d, m.stableWindow())
		}
		return ""
	})
	r, util := ratio()
	m.t.Logf("max/mean utilisation %.3f: %v", r, util)
	m.requireStable(m.stableWindow(), "a cluster balanced by weight")
}

func mepCapacityChange(t *testing.T, m *mep) {
	a, b := m.startNode(withPlacement(1)), m.startNode(withPlacement(1))
	m.weightedCoord()
	chs := names("capacity", m.size(40, 20))
	m.register(1, chs...)
	m.waitBalanced("equal capacities: equal counts")
	m.sync()
	since := m.chk.Rev()
	// b triples its capacity: a keeps a quarter of the channels.
	if err := b.n.SetCapacity(m.ctx, 3); err != nil {
		m.fatalf("SetCapacity: %v", err)
	}
	want := len(chs) / 4
	m.waitFor(fmt.Sprintf("%s to keep a quarter of the channels (%d)", a.name, want), func() string {
		c, why := m.settledCounts()
		if why != "" {
			return why
		}
		if c[a.ID()] != want {
			return fmt.Sprintf("counts %v", c)
		}
		return ""
	})
	m.sync()
	if got := m.movesSince(since, chs); got != len(chs)/2-want {
		m.fatalf("%d moves after the capacity change, want the minimum %d", got, len(chs)/2-want)
	}
	m.requireStable(m.stableWindow(), "a cluster balanced to the new capacity")
}

// requireOnlyOn checks that no ToWatch of chs was ever put on a node
// outside allowed, and that each of chs is now on one of them.
func (m *mep) requireOnlyOn(chs []string, allowed map[int64]bool, why string) {
	m.t.Helper()
	for _, ch := range chs {
		for _, kc := range m.chk.History(ch) {
			if kc.Type == kv.EventPut && kc.NodeID != 0 && kc.Info.State == meta.ToWatch && !allowed[kc.NodeID] {
				m.fatalf("%s: %s put ToWatch on node %d at revision %d", why, ch, kc.NodeID, kc.Rev)
			}
		}
		if a := m.chk.View().Assign[ch]; !allowed[a.NodeID] {
			m.fatalf("%s: %s is on node %d", why, ch, a.NodeID)
		}
	}
}

func mepLabelConstrainedPlacement(t *testing.T, m *mep) {
	ing1 := m.startNode(withPlacement(0, "group=ingest"))
	ing2 := m.startNode(withPlacement(0, "group=ingest", "zone=b"))
	plain := m.startNode()
	m.weightedCoord()
	n := m.size(20, 10)
	var specs []meta.ChannelSpec
	constrained, free := names("ingest", n), names("free", n)
	for i := range n {
		specs = append(specs, meta.ChannelSpec{Name: constrained[i], CollectionID: 1, Require: meta.MustLabels("group=ingest")},
			meta.ChannelSpec{Name: free[i], CollectionID: 2})
	}
	m.registerSpecs(specs...)
	m.settle()
	ingest := map[int64]bool{ing1.ID(): true, ing2.ID(): true}
	m.requireOnlyOn(constrained, ingest, "group=ingest")
	if c := m.counts(); c[plain.ID()] == 0 {
		m.fatalf("the unlabelled node took no channel: %v", c)
	}
	// An ingest node dies: its channels go to the other one only.
	m.crashNode(ing1)
	m.settle()
	m.requireOnlyOn(constrained, map[int64]bool{ing1.ID(): true, ing2.ID(): true}, "group=ingest after a failover")
	for _, ch := range constrained {
		if id := m.chk.View().Assign[ch].NodeID; id != ing2.ID() {
			m.fatalf("%s on node %d after %s died, want %s", ch, id, ing1.name, ing2.name)
		}
	}
}

func mepConstraintNoNodeMeets(t *testing.T, m *mep) {
	m.startNode(withPlacement(0, "group=cpu"))
	m.weightedCoord()
	gpu, cpu := names("gpu", 4), names("cpu", 4)
	var specs []meta.ChannelSpec
	for i := range gpu {
		specs = append(specs, meta.ChannelSpec{Name: gpu[i], CollectionID: 1, Require: meta.MustLabels("group=gpu")},
			meta.ChannelSpec{Name: cpu[i], CollectionID: 2})
	}
	m.registerSpecs(specs...)
	waiting := func() string {
		v := m.chk.View()
		for _, ch := range gpu {
			a, ok := v.Assign[ch]
			switch {
			case !ok:
				return ch + " has no key"
			case a.NodeID != 0:
				return fmt.Sprintf("%s is on node %d, which lacks group=gpu", ch, a.NodeID)
			case !strings.Contains(a.Info.LastError, "group=gpu"):
				return fmt.Sprintf("%s waits in remaining with LastError %q, which does not name group=gpu", ch, a.Info.LastError)
			}
		}
		for _, ch := range cpu {
			if a := v.Assign[ch]; a.NodeID == 0 || a.Info.State != meta.Watched {
				return fmt.Sprintf("%s is %v on node %d", ch, a.Info.State, a.NodeID)
			}
		}
		return ""
	}
	m.waitFor("the gpu channels to wait, visibly, in remaining", waiting)
	m.requireStable(m.stableWindow(), "channels waiting for a node with their labels")
	if why := waiting(); why != "" {
		m.fatalf("after the stable window: %s", why)
	}
	// A node with the label joins: they are placed on it.
	g := m.startNode(withPlacement(0, "group=gpu"))
	m.settle()
	for _, ch := range gpu {
		a := m.chk.View().Assign[ch]
		if a.NodeID != g.ID() {
			m.fatalf("%s on node %d, want the gpu node %d", ch, a.NodeID, g.ID())
		}
		if a.Info.LastError != "" {
			m.fatalf("%s is Watched but keeps LastError %q", ch, a.Info.LastError)
		}
	}
}

func mepZoneSpreadSurvivesZoneLoss(t *testing.T, m *mep) {
	zoneOf := map[*mepNode]string{}
	for _, z := range []string{"a", "b", "c"} {
		for range 2 {
			zoneOf[m.startNode(withPlacement(0, "zone="+z))] = z
		}
	}
	m.weightedCoord()
	colls := m.size(6, 3)
	var specs []meta.ChannelSpec
	collOf := map[string]int64{}
	for c := 1; c <= colls; c++ {
		for _, ch := range names(fmt.Sprintf("zoned-c%d", c), 3) {
			specs = append(specs, meta.ChannelSpec{Name: ch, CollectionID: int64(c), Spread: "zone"})
			collOf[ch] = int64(c)
		}
	}
	m.registerSpecs(specs...)
	m.settle()
	// perZone counts each collection's Watched channels per live zone.
	perZone := func() map[int64]map[string]int {
		procs := m.procByID()
		live := map[string]bool{}
		for _, p := range procs {
			live[zoneOf[p]] = true
		}
		out := map[int64]map[string]int{}
		for ch, a := range m.chk.View().Assign {
			c := collOf[ch]
			if out[c] == nil {
				out[c] = map[string]int{}
				for z := range live {
					out[c][z] = 0
				}
			}
			if p := procs[a.NodeID]; p != nil && a.Info.State == meta.Watched {
				out[c][zoneOf[p]]++
			}
		}
		return out
	}
	check := func(what string, gap int) {
		for c, zones := range perZone() {
			lo, hi := math.MaxInt, 0
			for _, n := range zones {
				lo, hi = min(lo, n), max(hi, n)
			}
			if hi-lo > gap {
				keys := make([]string, 0, len(zones))
				for z, n := range zones {
					keys = append(keys, fmt.Sprintf("%s:%d", z, n))
				}
				sort.Strings(keys)
				m.fatalf("%s: collection %d spread over zones as %v", what, c, keys)
			}
		}
	}
	check("three zones", 0) // one channel of each collection per zone
	// Zone a goes dark: both its nodes die at once.
	for p, z := range zoneOf {
		if z == "a" {
			m.crashNode(p)
		}
	}
	m.settle()
	check("zone a lost", 1) // three channels over two zones: 2 and 1
}

func mepMeasuredLoad(t *testing.T, m *mep) {
	fast := func(c *nodeCfg) { c.extra = append(c.extra, nodewatch.WithLoadInterval(m.tm.progress)) }
	a, b := m.startNode(fast), m.startNode(fast)
	m.weightedCoord()
	chs := names("measured", 10)
	m.register(1, chs...)
	m.waitBalanced("equal weights: equal counts")
	// a's handler measures one of its channels at 20 and the rest at 1.
	on := m.channelsOn(a.ID())
	heavy := on[0]
	for _, ch := range on {
		l := 1.0
		if ch == heavy {
			l = 20
		}
		if err := a.n.ReportLoad(ch, l); err != nil {
			m.fatalf("ReportLoad: %v", err)
		}
	}
	m.waitFor(fmt.Sprintf("%s to keep only the heavy channel", a.name), func() string {
		c, why := m.settledCounts()
		if why != "" {
			return why
		}
		if c[a.ID()] != 1 || c[b.ID()] != len(chs)-1 {
			return fmt.Sprintf("counts %v", c)
		}
		return ""
	})
	if id := m.chk.View().Assign[heavy].NodeID; id != a.ID() {
		m.fatalf("the heavy channel %s moved to node %d; the light ones should have", heavy, id)
	}
	m.requireStable(m.stableWindow(), "a cluster balanced by measured load")
}
