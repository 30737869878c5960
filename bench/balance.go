package bench

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/chanwatch/chanwatch/channelmgr"
	"github.com/chanwatch/chanwatch/meta"
)

// Balance is B11, balance quality: channels with skewed (Zipf-like)
// weights, registered collection by collection, placed in batches on
// nodes with mixed capacities (1, 2, 4), three zones and a node group, then
// two balance rounds of at most a twentieth of the channels each. It runs
// on the policy alone, through channelmgr.PlaceConstrained (the
// coordinator's constraint grouping) and the coordinator's checks of a
// balance move (Movable on From, To meets the channel's Require); no store
// is involved, so it is exact and repeatable (a fixed seed). The same
// input goes to Weighted (chanwatch) and LeastLoaded (the baseline) in the
// same run. The figure is Weighted's max/mean utilisation after two
// rounds (mean: total load / total capacity); the goal is <= 1.10, with no
// constraint violated. Times are the policies' CPU time for the whole run.
func Balance(ctx context.Context, channels, nodes int) (Result, error) {
	r := Result{Name: "B11 balance", N: channels}
	in := balanceInput(channels, nodes)
	budget := max(1, channels/20)
	w, err := runBalance(ctx, channelmgr.Weighted(), in, budget)
	if err != nil {
		return r, err
	}
	ll, err := runBalance(ctx, channelmgr.LeastLoaded(), in, budget)
	if err != nil {
		return r, err
	}
	r.ChanwatchS, r.BaselineS = w.took.Seconds(), ll.took.Seconds()
	r.Ratio = max(w.ratio[2], w.ratio[5])
	r.Figures = map[string]float64{"move_budget_per_round": float64(budget)}
	phases := []string{"placed", "round1", "round2", "joined", "join_round1", "join_round2"}
	for name, s := range map[string]balanceStats{"weighted": w, "least_loaded": ll} {
		for i, ph := range phases {
			r.Figures[name+"_max_mean_"+ph] = round3(s.ratio[i])
			r.Figures[name+"_min_mean_"+ph] = round3(s.minRatio[i])
		}
		r.Figures[name+"_moves"] = float64(s.moves[0])
		r.Figures[name+"_join_moves"] = float64(s.moves[1])
		r.Figures[name+"_moves_dropped"] = float64(s.dropped)
		r.Figures[name+"_violations"] = float64(s.violations)
		r.Figures[name+"_spread_collections"] = round3(s.spread)
	}
	goal := "<= 1.10"
	if w.violations > 0 || w.moves[0] > 2*budget || w.moves[1] > 2*budget {
		r.Ratio = math.Max(r.Ratio, 99) // a violated constraint or budget fails the goal whatever the balance
		goal = "<= 1.10 with 0 constraint violations, moves within the budget"
	}
	phase := func(s balanceStats) string {
		return fmt.Sprintf("max/mean placed %.3f, after 2 rounds %.3f (%d moves); 2 nodes join: %.3f (min/mean %.3f), after 2 rounds %.3f (min/mean %.3f, %d moves); %d constraint violations, %d moves refused, %.0f%% of collections on all the zones they can span",
			s.ratio[0], s.ratio[2], s.moves[0], s.ratio[3], s.minRatio[3], s.ratio[5], s.minRatio[5], s.moves[1], s.violations, s.dropped, 100*s.spread)
	}
	r.finish(goal, 1.10,
		fmt.Sprintf("policy + the coordinator's constraint checks, no store; %d nodes (capacities 1/2/4, 3 zones, %d with group=ingest), %d collections, weights %s; move budget %d per round",
			nodes, in.ingestNodes, in.collections, in.weightSummary(), budget),
		"Weighted "+phase(w), "LeastLoaded "+phase(ll))
	return r, nil
}

func round3(x float64) float64 { return math.Round(x*1000) / 1000 }

// balanceCase is B11's input: nodes (empty) and channels in registration
// order.
type balanceCase struct {
	nodes       []channelmgr.NodeLoad
	chs         []channelmgr.Channel
	collections int
	ingestNodes int
	require     map[int64]meta.Labels // by collection
	groupZones  map[meta.Labels]int   // zones spanned by the nodes that meet a Require
}

func (in balanceCase) weightSummary() string {
	ws := make([]float64, len(in.chs))
	for i, c := range in.chs {
		ws[i] = c.Weight
	}
	slices.Sort(ws)
	if len(ws) == 0 {
		return "none"
	}
	return fmt.Sprintf("min %.1f, median %.1f, p99 %.1f, max %.1f", ws[0], ws[len(ws)/2], ws[len(ws)*99/100], ws[len(ws)-1])
}

// balanceInput makes B11's input from a fixed seed: node i has capacity
// 1, 2, 1, 4, 2 (cycling), zone z<i mod 3>, and every fourth node has
// group=ingest; collections of 1 to 8 channels share a Zipf-distributed
// weight (1..100, s = 1.1) with ±25% per channel, all spread over zone, a
// tenth of them requiring group=ingest.
func balanceInput(channels, nodes int) balanceCase {
	rng := rand.New(rand.NewPCG(11, 2026))
	zipf := rand.NewZipf(rng, 1.1, 1, 99)
	in := balanceCase{require: map[int64]meta.Labels{}, groupZones: map[meta.Labels]int{}}
	caps := []float64{1, 2, 1, 4, 2}
	for i := range nodes {
		labels := []string{fmt.Sprintf("zone=z%d", i%3)}
		if i%4 == 0 {
			labels = append(labels, "group=ingest")
			in.ingestNodes++
		}
		in.nodes = append(in.nodes, channelmgr.NodeLoad{ID: int64(i + 1), Capacity: caps[i%len(caps)], Labels: meta.MustLabels(labels...)})
	}
	ingest := meta.MustLabels("group=ingest")
	for len(in.chs) < channels {
		in.collections++
		coll := int64(in.collections)
		size := min(1+rng.IntN(8), channels-len(in.chs))
		base := float64(zipf.Uint64() + 1)
		var req meta.Labels
		if rng.IntN(10) == 0 {
			req = ingest
		}
		in.require[coll] = req
		for j := range size {
			w := math.Round(base*(0.75+0.5*rng.Float64())*100) / 100
			in.chs = append(in.chs, channelmgr.Channel{Name: fmt.Sprintf("b11-c%05d-%d", coll, j), CollectionID: coll,
				Weight: w, Require: req, Spread: "zone"})
		}
	}
	for _, req := range []meta.Labels{{}, ingest} {
		zs := map[string]bool{}
		for _, n := range in.nodes {
			if n.Labels.Meets(req) {
				z, _ := n.Labels.Get("zone")
				zs[z] = true
			}
		}
		in.groupZones[req] = len(zs)
	}
	return in
}

type balanceStats struct {
	in balanceCase
	// ratio and minRatio are max/mean and min/mean utilisation after
	// placement, balance rounds 1 and 2, two nodes joining, rounds 1 and 2.
	ratio, minRatio [6]float64
	moves           [2]int // after placement, after the join
	dropped         int    // moves the coordinator would refuse
	violations      int    // channels on a node without their required labels
	spread          float64
	took            time.Duration
}

// runBalance places in's channels in batches of about 100 (whole
// collections, as registrations arrive), then runs two balance rounds of
// at most budget moves each, applying only the moves the coordinator
// would accept.
func runBalance(ctx context.Context, p channelmgr.Policy, in balanceCase, budget int) (balanceStats, error) {
	var s balanceStats
	nodes := make([]channelmgr.NodeLoad, len(in.nodes))
	copy(nodes, in.nodes)
	at := map[int64]int{}
	for i, n := range nodes {
		at[n.ID] = i
	}
	s.in = in
	start := time.Now()
	for lo := 0; lo < len(in.chs); {
		if err := ctx.Err(); err != nil {
			return s, err
		}
		hi := min(lo+100, len(in.chs))
		for hi < len(in.chs) && in.chs[hi].CollectionID == in.chs[hi-1].CollectionID {
			hi++
		}
		batch := in.chs[lo:hi]
		got := channelmgr.PlaceConstrained(p, batch, nodes)
		for i, id := range got {
			j, ok := at[id]
			if !ok {
				return s, fmt.Errorf("bench: B11: %s placed on unknown node %d", batch[i].Name, id)
			}
			c := batch[i]
			c.Movable = true
			nodes[j].Channels = append(nodes[j].Channels, c)
		}
		lo = hi
	}
	s.ratio[0], s.minRatio[0] = maxOverMean(nodes), minOverMean(nodes)
	s.moves[0] = s.rounds(p, nodes, at, budget, s.ratio[1:3], s.minRatio[1:3])
	// Two nodes join (capacity 2, zones z0 and z1): the mean drops, and
	// balance must fill them.
	for i := range 2 {
		id := int64(len(nodes) + 1)
		at[id] = len(nodes)
		nodes = append(nodes, channelmgr.NodeLoad{ID: id, Capacity: 2, Labels: meta.MustLabels(fmt.Sprintf("zone=z%d", i))})
	}
	s.ratio[3], s.minRatio[3] = maxOverMean(nodes), minOverMean(nodes)
	s.moves[1] = s.rounds(p, nodes, at, budget, s.ratio[4:6], s.minRatio[4:6])
	s.took = time.Since(start)
	s.count(nodes)
	return s, nil
}

// rounds runs len(ratio) balance rounds of at most budget moves each on
// nodes, applying only the moves the coordinator would accept, and records
// max/mean and min/mean after each. It returns the moves applied.
func (s *balanceStats) rounds(p channelmgr.Policy, nodes []channelmgr.NodeLoad, at map[int64]int, budget int, ratio, minRatio []float64) int {
	applied := 0
	for round := range ratio {
		for _, mv := range p.Balance(nodes, budget) {
			fi, ok1 := at[mv.From]
			ti, ok2 := at[mv.To]
			if !ok1 || !ok2 || mv.From == mv.To {
				s.dropped++
				continue
			}
			k := slices.IndexFunc(nodes[fi].Channels, func(c channelmgr.Channel) bool { return c.Name == mv.Channel && c.Movable })
			if k < 0 || !nodes[ti].Meets(nodes[fi].Channels[k]) {
				s.dropped++
				continue
			}
			c := nodes[fi].Channels[k]
			nodes[fi].Channels = slices.Delete(nodes[fi].Channels, k, k+1)
			c.Movable = false // one move per channel per round, as in the coordinator
			nodes[ti].Channels = append(nodes[ti].Channels, c)
			applied++
		}
		for i := range nodes {
			for j := range nodes[i].Channels {
				nodes[i].Channels[j].Movable = true
			}
		}
		ratio[round], minRatio[round] = maxOverMean(nodes), minOverMean(nodes)
	}
	return applied
}

// count fills violations and spread from the final placement.
func (s *balanceStats) count(nodes []channelmgr.NodeLoad) {
	zones := map[int64]map[string]bool{}
	sizes := map[int64]int{}
	for _, n := range nodes {
		z, _ := n.Labels.Get("zone")
		for _, c := range n.Channels {
			if !n.Meets(c) {
				s.violations++
			}
			if zones[c.CollectionID] == nil {
				zones[c.CollectionID] = map[string]bool{}
			}
			zones[c.CollectionID][z] = true
			sizes[c.CollectionID]++
		}
	}
	// A collection is spread when it spans as many zones as it can: three,
	// or fewer when it has fewer channels or its required group's nodes
	// span fewer zones.
	spread := 0
	for coll, zs := range zones {
		if len(zs) >= min(3, sizes[coll], s.in.groupZones[s.in.require[coll]]) {
			spread++
		}
	}
	s.spread = float64(spread) / float64(max(1, len(zones)))
}

// minOverMean is the smallest node utilisation over the mean.
func minOverMean(nodes []channelmgr.NodeLoad) float64 {
	lo := math.Inf(1)
	for _, n := range nodes {
		lo = math.Min(lo, n.Utilisation())
	}
	return lo / meanUtil(nodes)
}

// meanUtil is total load / total capacity.
func meanUtil(nodes []channelmgr.NodeLoad) float64 {
	var load, capacity float64
	for _, n := range nodes {
		load += n.Load()
		capacity += max(n.Capacity, 0)
		if n.Capacity == 0 {
			capacity += meta.DefaultCapacity
		}
	}
	return load / capacity
}

// maxOverMean is the largest node utilisation over the mean (total load /
// total capacity); 1 with no load.
func maxOverMean(nodes []channelmgr.NodeLoad) float64 {
	hi := 0.0
	for _, n := range nodes {
		hi = math.Max(hi, n.Utilisation())
	}
	if m := meanUtil(nodes); m > 0 {
		return hi / m
	}
	return 1
}
