package channelmgr

import (
	"cmp"
	"math"
	"slices"

	"github.com/chanwatch/chanwatch/meta"
)

// Meets reports whether node n may take channel c: n carries every label
// of c.Require. It is the hard constraint the coordinator checks on every
// policy's answer.
func (n NodeLoad) Meets(c Channel) bool { return n.Labels.Meets(c.Require) }

// Load is the sum of the weights of n's channels (a zero weight counts 1).
func (n NodeLoad) Load() float64 {
	var l float64
	for _, c := range n.Channels {
		l += c.weight()
	}
	return l
}

// Utilisation is n's load over its capacity (a zero capacity counts 1).
func (n NodeLoad) Utilisation() float64 { return n.Load() / n.capacity() }

func (c Channel) weight() float64 {
	if c.Weight <= 0 {
		return meta.DefaultWeight
	}
	return c.Weight
}

func (n NodeLoad) capacity() float64 {
	if n.Capacity <= 0 {
		return meta.DefaultCapacity
	}
	return n.Capacity
}

// eligible returns the nodes that meet c's Require.
func eligible(nodes []NodeLoad, c Channel) []NodeLoad {
	if c.Require.IsZero() {
		return nodes
	}
	var out []NodeLoad
	for _, n := range nodes {
		if n.Meets(c) {
			out = append(out, n)
		}
	}
	return out
}

// WeightedTolerance is how far from the mean utilisation Weighted lets a
// node be before Balance moves channels: every node within
// mean*(1±WeightedTolerance), mean = total load / total capacity.
const WeightedTolerance = 0.05

// Weighted is the policy for unequal channels and nodes: it places and
// balances by utilisation (load / capacity; load = sum of channel weights)
// under the channels' constraints.
//
// Place never picks a node that does not meet a channel's Require (it
// returns 0 for a channel no offered node meets; the coordinator never
// asks for one), nor the channel's Avoid node while another eligible node
// exists. It places the heaviest channels first, each on the eligible node
// that, in order, holds the fewest channels of its collection in the same
// value of the channel's Spread label (when it has one), ends with the
// lowest utilisation, holds the fewest channels of its collection, and has
// the lowest ID.
//
// Balance returns nil when every node's utilisation is within
// WeightedTolerance of the mean. Otherwise each move is the one that most
// reduces the load outside that band (ties: the largest reduction of the
// squared deviation, then the heaviest channel, then names and IDs), taken
// first from the most utilised node above the band, then into the least
// utilised node below it; a move goes only to a node that meets the
// channel's Require and never leaves its collection less spread over its
// Spread label. It stops at maxMoves or when no move helps, so it moves no
// channel that does not bring the nodes closer to the band.
//
// A node without a channel's Spread label counts as one more value of it
// (the empty one). Measured load, when the coordinator has it, comes in as
// the channel's Weight.
//
// Both are deterministic: the same input gives the same answer. With unit
// weights, unit capacities and no labels Weighted places like LeastLoaded
// (counts within one) but balances to the band, not to within one channel.
func Weighted() Policy { return weighted{tol: WeightedTolerance} }

type weighted struct{ tol float64 }

// wnode is a node as Weighted sees it while it decides.
type wnode struct {
	id     int64
	cap    float64
	load   float64
	labels meta.Labels
	zone   map[string]string // labels as a map, for Spread lookups
	coll   map[int64]int
	chans  []Channel // movable, not yet moved
}

func (n *wnode) util() float64 { return n.load / n.cap }

// spreadKey counts the channels of one collection (that spread over label
// key) on the nodes whose label key has value val.
type spreadKey struct {
	key  string
	coll int64
	val  string
}

type wstate struct {
	nodes  []*wnode
	spread map[spreadKey]int
}

func newWState(nodes []NodeLoad) *wstate {
	s := &wstate{nodes: make([]*wnode, len(nodes)), spread: map[spreadKey]int{}}
	for i, n := range nodes {
		w := &wnode{id: n.ID, cap: n.capacity(), labels: n.Labels, zone: n.Labels.Map(), coll: map[int64]int{}}
		for _, c := range n.Channels {
			w.add(c, s)
			if c.Movable {
				w.chans = append(w.chans, c)
			}
		}
		s.nodes[i] = w
	}
	return s
}

func (n *wnode) add(c Channel, s *wstate) {
	n.load += c.weight()
	n.coll[c.CollectionID]++
	if c.Spread != "" {
		s.spread[spreadKey{c.Spread, c.CollectionID, n.zone[c.Spread]}]++
	}
}

func (n *wnode) remove(c Channel, s *wstate) {
	n.load -= c.weight()
	n.coll[c.CollectionID]--
	if c.Spread != "" {
		s.spread[spreadKey{c.Spread, c.CollectionID, n.zone[c.Spread]}]--
	}
}

func (n *wnode) meets(c Channel) bool { return n.labels.Meets(c.Require) }

// spreadOf is how many channels of c's collection are in n's value of c's
// Spread label (0 when c does not spread).
func (s *wstate) spreadOf(c Channel, n *wnode) int {
	if c.Spread == "" {
		return 0
	}
	return s.spread[spreadKey{c.Spread, c.CollectionID, n.zone[c.Spread]}]
}

func (p weighted) Place(chs []Channel, nodes []NodeLoad) []int64 {
	out := make([]int64, len(chs))
	if len(nodes) == 0 {
		return out
	}
	s := newWState(nodes)
	order := make([]int, len(chs))
	for i := range order {
		order[i] = i
	}
	// Constrained channels first (fewer choices), then heaviest first.
	slices.SortStableFunc(order, func(a, b int) int {
		ca, cb := chs[a], chs[b]
		if x, y := !ca.Require.IsZero() || ca.Avoid != 0, !cb.Require.IsZero() || cb.Avoid != 0; x != y {
			if x {
				return -1
			}
			return 1
		}
		return cmp.Compare(cb.weight(), ca.weight())
	})
	for _, i := range order {
		c := chs[i]
		best := s.pick(c, true)
		if best == nil {
			best = s.pick(c, false) // only the Avoid node meets it
		}
		if best == nil {
			continue // no offered node meets c's Require: 0
		}
		best.add(c, s)
		out[i] = best.id
	}
	return out
}

// pick returns the best eligible node for c (skipping c.Avoid when
// avoid), or nil.
func (s *wstate) pick(c Channel, avoid bool) *wnode {
	var best *wnode
	var bestSpread, bestColl int
	var bestUtil float64
	w := c.weight()
	for _, n := range s.nodes {
		if !n.meets(c) || (avoid && c.Avoid != 0 && n.id == c.Avoid) {
			continue
		}
		sp, u, cl := s.spreadOf(c, n), (n.load+w)/n.cap, n.coll[c.CollectionID]
		better := best == nil
		if !better {
			switch {
			case sp != bestSpread:
				better = sp < bestSpread
			case u != bestUtil:
				better = u < bestUtil
			case cl != bestColl:
				better = cl < bestColl
			default:
				better = n.id < best.id
			}
		}
		if better {
			best, bestSpread, bestUtil, bestColl = n, sp, u, cl
		}
	}
	return best
}

// wmove is a candidate balance move.
type wmove struct {
	src, dst *wnode
	idx      int // in src.chans
	excess   float64
	variance float64
}

func (p weighted) Balance(nodes []NodeLoad, maxMoves int) []Move {
	if len(nodes) < 2 || maxMoves <= 0 {
		return nil
	}
	s := newWState(nodes)
	var load, capacity float64
	for _, n := range s.nodes {
		load += n.load
		capacity += n.cap
	}
	if load == 0 {
		return nil
	}
	mean := load / capacity
	hi, lo := mean*(1+p.tol), mean*(1-p.tol)
	// excess is how much of n's load lies outside the band, in load units.
	excess := func(n *wnode, l float64) float64 {
		return math.Max(0, l-hi*n.cap) + math.Max(0, lo*n.cap-l)
	}
	dev := func(n *wnode, l float64) float64 { d := l - mean*n.cap; return d * d / n.cap }
	// eval scores moving channel i of src to dst (ok false: not allowed,
	// or it does not bring the pair closer to the band).
	eval := func(src, dst *wnode, i int) (wmove, bool) {
		c := src.chans[i]
		if !dst.meets(c) {
			return wmove{}, false
		}
		if c.Spread != "" && src.zone[c.Spread] != dst.zone[c.Spread] &&
			s.spreadOf(c, dst)+1 > s.spreadOf(c, src) {
			return wmove{}, false // the collection would be less spread
		}
		w := c.weight()
		ex := excess(src, src.load) + excess(dst, dst.load) - excess(src, src.load-w) - excess(dst, dst.load+w)
		va := dev(src, src.load) + dev(dst, dst.load) - dev(src, src.load-w) - dev(dst, dst.load+w)
		const eps = 1e-9
		if ex <= eps*math.Max(1, mean) || va <= 0 {
			return wmove{}, false
		}
		return wmove{src: src, dst: dst, idx: i, excess: ex, variance: va}, true
	}
	better := func(a, b wmove) bool { // a better than b
		switch {
		case a.excess != b.excess:
			return a.excess > b.excess
		case a.variance != b.variance:
			return a.variance > b.variance
		}
		ca, cb := a.src.chans[a.idx], b.src.chans[b.idx]
		switch {
		case ca.weight() != cb.weight():
			return ca.weight() > cb.weight()
		case ca.Name != cb.Name:
			return ca.Name < cb.Name
		}
		return a.dst.id < b.dst.id
	}
	byUtil := func(desc bool) []*wnode {
		ns := slices.Clone(s.nodes)
		slices.SortStableFunc(ns, func(a, b *wnode) int {
			if c := cmp.Compare(a.util(), b.util()); c != 0 {
				if desc {
					return -c
				}
				return c
			}
			return cmp.Compare(a.id, b.id)
		})
		return ns
	}
	var moves []Move
	for len(moves) < maxMoves {
		var best wmove
		found := false
		// Off the most utilised node above the band that has a move...
		for _, src := range byUtil(true) {
			if src.load <= hi*src.cap {
				break
			}
			for i := range src.chans {
				for _, dst := range s.nodes {
					if dst == src {
						continue
					}
					if m, ok := eval(src, dst, i); ok && (!found || better(m, best)) {
						best, found = m, true
					}
				}
			}
			if found {
				break
			}
		}
		// ... else onto the least utilised node below it.
		if !found {
			for _, dst := range byUtil(false) {
				if dst.load >= lo*dst.cap {
					break
				}
				for _, src := range s.nodes {
					if src == dst {
						continue
					}
					for i := range src.chans {
						if m, ok := eval(src, dst, i); ok && (!found || better(m, best)) {
							best, found = m, true
						}
					}
				}
				if found {
					break
				}
			}
		}
		if !found {
			return moves
		}
		c := best.src.chans[best.idx]
		best.src.chans = slices.Delete(best.src.chans, best.idx, best.idx+1)
		best.src.remove(c, s)
		best.dst.add(c, s)
		moves = append(moves, Move{Channel: c.Name, From: best.src.id, To: best.dst.id})
	}
	return moves
}
