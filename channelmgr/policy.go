package channelmgr

import (
	"cmp"
	"container/heap"
	"hash/fnv"
	"slices"
	"strconv"

	"github.com/chanwatch/chanwatch/meta"
)

// Channel is what a Policy sees of one channel.
type Channel struct {
	Name         string
	CollectionID int64
	// Avoid is the node the channel's last attempt failed on (0: none).
	// Place must not choose it while it offers another node.
	Avoid int64
	// Movable marks the channels the balance step may move: Watched on a
	// serving node, with no move in flight. Only NodeLoad channels have it.
	Movable bool
	// Weight is the channel's load (meta.ChannelSpec.Weight; 0 means 1).
	// Count policies ignore it.
	Weight float64
	// Require lists labels a node must carry to take the channel: a hard
	// constraint the coordinator enforces on every policy's answer (see
	// NodeLoad.Meets). Spread names a node label across whose values the
	// channels of the collection should spread: a preference.
	Require meta.Labels
	Spread  string
}

// NodeLoad is one serving node and the channels that count on it: those
// assigned to it in any state, and those moving to it.
type NodeLoad struct {
	ID       int64
	Channels []Channel
	// Capacity is how much load the node takes (meta.NodeSession.Capacity;
	// 0 means 1); its utilisation is the sum of its channels' weights over
	// it. Labels are the node's labels (zone, group). Count policies
	// ignore both.
	Capacity float64
	Labels   meta.Labels
}

// Move is one balance move of Channel from node From to node To.
type Move struct {
	Channel  string
	From, To int64
}

// Policy decides where channels go. The coordinator calls it from its one
// decision goroutine (a Policy needs no locking unless shared between
// coordinators), with nodes sorted by ID and channels by name, and never
// with an empty node list. It treats the answers as advice and checks them:
// a placement on a node it did not offer, or on a node that does not meet
// the channel's Require, falls back to LeastLoaded, and a move of a channel
// that is not Movable on From, or to a node not offered or not meeting its
// Require, is dropped; a panic is recovered, logged and treated as such an
// answer. Place is only ever offered nodes that meet every given channel's
// Require (the coordinator calls it once per distinct Require), so a policy
// that ignores labels still places correctly. A Policy must be
// deterministic and must not block.
type Policy interface {
	// Place returns one node ID (from nodes) for each of chs, in order. It
	// should keep node loads even (chs included) and spread each
	// collection's channels, and never pick a channel's Avoid node while
	// it offers another.
	Place(chs []Channel, nodes []NodeLoad) []int64
	// Balance returns at most maxMoves (>= 1) moves of Movable channels
	// that bring the nodes closer to the policy's ideal, or nil when they
	// are there. The coordinator caps moves in flight and calls Balance
	// again as moves finish, so a step need not reach the ideal at once.
	//
	// Neither method may modify chs, nodes or the Channels of a NodeLoad:
	// they share memory with the coordinator's pass, which reuses them
	// (quick passes place with them). The coordinator checks every move
	// against its own view, not against what a policy left in nodes.
	Balance(nodes []NodeLoad, maxMoves int) []Move
}

// LeastLoaded is the default policy: Place fills the least loaded nodes
// first so that node counts end within 1 of each other where the existing
// loads allow it, and among the nodes that may take a channel prefers the
// one with the fewest channels of the same collection. Balance is
// BalanceStep.
func LeastLoaded() Policy { return leastLoaded{} }

type leastLoaded struct{}

func (leastLoaded) Place(chs []Channel, nodes []NodeLoad) []int64 {
	return placeLeastLoaded(chs, nodes)
}

func (leastLoaded) Balance(nodes []NodeLoad, maxMoves int) []Move {
	return BalanceStep(nodes, maxMoves)
}

// placeLeastLoaded water-fills: every node ends at level L or L+1 (nodes
// already above stay as they are), and within that each channel goes to the
// node with the fewest channels of its collection.
func placeLeastLoaded(chs []Channel, nodes []NodeLoad) []int64 {
	out := make([]int64, len(chs))
	if len(nodes) == 0 || len(chs) == 0 {
		return out
	}
	cur := make([]int, len(nodes))
	coll := make([]map[int64]int, len(nodes))
	for i, n := range nodes {
		cur[i] = len(n.Channels)
		coll[i] = make(map[int64]int)
		for _, c := range n.Channels {
			coll[i][c.CollectionID]++
		}
	}
	level, extra := waterLevel(cur, len(chs))
	idx := func(i int) int64 { return nodes[i].ID }
	// open reports whether node i may take one more channel without
	// leaving the water-fill. A node that closes never opens again: cur
	// only grows, level is fixed and extra only shrinks.
	open := func(i int) bool { return cur[i] < level || (cur[i] == level && extra > 0) }
	// Each channel goes to the open node (not its Avoid node) with the
	// fewest channels of its collection, then the fewest channels, then
	// the lowest ID. The open nodes wait in a heap by (channels, ID), so
	// the first one popped that holds none of the collection is the
	// answer; the few popped before it (they hold some) go back after.
	// At 10,000 nodes this is what keeps a placement of a million
	// channels from taking hours (a scan of every node per channel did).
	// When about half the nodes hold the collection already (one big
	// collection), popping would visit most of them: a scan is cheaper
	// there, and gives the same answer.
	h := &loadHeap{cur: cur, id: idx, pos: make([]int, len(nodes))}
	for i := range nodes {
		h.pos[i] = -1
		if open(i) {
			h.pos[i] = len(h.items)
			h.items = append(h.items, i)
		}
	}
	heap.Init(h)
	holding := map[int64]int{} // how many nodes hold some of a collection
	for i := range nodes {
		for id := range coll[i] {
			holding[id]++
		}
	}
	var aside []int
	for _, ci := range placeOrder(chs) {
		c := chs[ci]
		best := -1
		aside = aside[:0]
		if 2*holding[c.CollectionID] >= h.Len() {
			better := func(i int) bool {
				if best < 0 {
					return true
				}
				if a, b := coll[i][c.CollectionID], coll[best][c.CollectionID]; a != b {
					return a < b
				}
				if cur[i] != cur[best] {
					return cur[i] < cur[best]
				}
				return idx(i) < idx(best)
			}
			for i := range nodes {
				if open(i) && (c.Avoid == 0 || idx(i) != c.Avoid) && better(i) {
					best = i
				}
			}
		} else {
			for h.Len() > 0 {
				i := heap.Pop(h).(int)
				if !open(i) {
					continue // closed for good
				}
				aside = append(aside, i)
				if c.Avoid != 0 && idx(i) == c.Avoid {
					continue
				}
				if coll[i][c.CollectionID] == 0 {
					best = i
					break
				}
			}
			if best < 0 {
				// Every open node holds some of the collection: the fewest.
				for _, i := range aside {
					if c.Avoid != 0 && idx(i) == c.Avoid {
						continue
					}
					if best < 0 || coll[i][c.CollectionID] < coll[best][c.CollectionID] ||
						(coll[i][c.CollectionID] == coll[best][c.CollectionID] && (cur[i] < cur[best] || (cur[i] == cur[best] && idx(i) < idx(best)))) {
						best = i
					}
				}
			}
		}
		if best < 0 {
			// Only the avoided node has room: go over the level on the
			// least loaded other node rather than straight back.
			for i := range nodes {
				if idx(i) != c.Avoid && (best < 0 || cur[i] < cur[best] || (cur[i] == cur[best] && idx(i) < idx(best))) {
					best = i
				}
			}
		}
		if best < 0 { // the avoided node is the only node
			best = slices.IndexFunc(nodes, func(n NodeLoad) bool { return n.ID == c.Avoid })
		}
		if cur[best] == level && extra > 0 {
			extra--
		}
		cur[best]++
		if coll[best][c.CollectionID] == 0 {
			holding[c.CollectionID]++
		}
		coll[best][c.CollectionID]++
		out[ci] = idx(best)
		if at := h.pos[best]; at >= 0 {
			// Placed by the scan while in the heap: its key grew.
			if open(best) {
				heap.Fix(h, at)
			} else {
				heap.Remove(h, at)
			}
		}
		for _, i := range aside {
			if open(i) {
				heap.Push(h, i)
			}
		}
	}
	return out
}

// loadHeap orders node indexes by (channels, node ID); pos is each node's
// place in items (-1: not in the heap).
type loadHeap struct {
	items []int
	pos   []int
	cur   []int
	id    func(int) int64
}

func (h *loadHeap) Len() int { return len(h.items) }
func (h *loadHeap) Less(a, b int) bool {
	i, j := h.items[a], h.items[b]
	if h.cur[i] != h.cur[j] {
		return h.cur[i] < h.cur[j]
	}
	return h.id(i) < h.id(j)
}
func (h *loadHeap) Swap(a, b int) {
	h.items[a], h.items[b] = h.items[b], h.items[a]
	h.pos[h.items[a]], h.pos[h.items[b]] = a, b
}
func (h *loadHeap) Push(x any) {
	h.pos[x.(int)] = len(h.items)
	h.items = append(h.items, x.(int))
}
func (h *loadHeap) Pop() any {
	x := h.items[len(h.items)-1]
	h.items = h.items[:len(h.items)-1]
	h.pos[x] = -1
	return x
}

// waterLevel returns the largest level L such that raising every node below
// L to L takes at most n channels, and how many channels are left over
// (each of those lifts one node from L to L+1).
func waterLevel(loads []int, n int) (level, extra int) {
	sorted := slices.Clone(loads)
	slices.Sort(sorted)
	level, left := sorted[0], n
	for i := 0; ; i++ {
		// Nodes [0..i] sit at level: lift them to the next node's load,
		// or as far as the channels go.
		width := i + 1
		if i+1 < len(sorted) {
			if need := (sorted[i+1] - level) * width; need <= left {
				left -= need
				level = sorted[i+1]
				continue
			}
		}
		return level + left/width, left % width
	}
}

// placeOrder places channels with an Avoid hint first (they have fewer
// choices), then interleaves collections so that no collection is left with
// only the remainder of the capacity.
func placeOrder(chs []Channel) []int {
	var avoid []int
	groups := map[int64][]int{}
	var ids []int64
	for i, c := range chs {
		if c.Avoid != 0 {
			avoid = append(avoid, i)
			continue
		}
		if _, ok := groups[c.CollectionID]; !ok {
			ids = append(ids, c.CollectionID)
		}
		groups[c.CollectionID] = append(groups[c.CollectionID], i)
	}
	slices.Sort(ids)
	order := avoid
	for round := 0; len(order) < len(chs); round++ {
		for _, id := range ids {
			if g := groups[id]; round < len(g) {
				order = append(order, g[round])
			}
		}
	}
	return order
}

type nodeState struct {
	id     int64
	count  int
	coll   map[int64]int
	chans  []Channel // movable, not yet moved
	labels meta.Labels
}

func (s *nodeState) meets(c Channel) bool { return s.labels.Meets(c.Require) }

// BalanceStep returns the fewest moves (at most maxMoves) that bring node
// counts to within 1 of each other: each move takes a Movable channel from
// the most loaded node that has one to the least loaded node, choosing the
// channel whose collection is most over-represented on the source compared
// with the target among those whose Require the target meets. It returns nil when counts already differ by at most 1.
func BalanceStep(nodes []NodeLoad, maxMoves int) []Move {
	if len(nodes) < 2 || maxMoves <= 0 {
		return nil
	}
	ns := make([]*nodeState, len(nodes))
	for i, n := range nodes {
		s := &nodeState{id: n.ID, count: len(n.Channels), coll: map[int64]int{}, labels: n.Labels}
		for _, c := range n.Channels {
			s.coll[c.CollectionID]++
			if c.Movable {
				s.chans = append(s.chans, c)
			}
		}
		ns[i] = s
	}
	var moves []Move
	for len(moves) < maxMoves {
		// Least loaded target (lowest ID on ties), most loaded source that
		// still has a movable channel (highest count, lowest ID on ties).
		dst := ns[0]
		for _, s := range ns[1:] {
			if s.count < dst.count {
				dst = s
			}
		}
		srcs := slices.Clone(ns)
		slices.SortStableFunc(srcs, func(a, b *nodeState) int { return cmp.Compare(b.count, a.count) })
		var src *nodeState
		for _, s := range srcs {
			if s.count-dst.count <= 1 {
				break
			}
			if len(s.chans) > 0 {
				src = s
				break
			}
		}
		if src == nil {
			return moves
		}
		// Only a channel whose Require the target meets (every channel,
		// when none has constraints).
		best := -1
		score := func(c Channel) int { return src.coll[c.CollectionID] - dst.coll[c.CollectionID] }
		for i, c := range src.chans {
			if dst.meets(c) && (best < 0 || score(c) > score(src.chans[best])) {
				best = i
			}
		}
		if best < 0 {
			return moves
		}
		c := src.chans[best]
		src.chans = slices.Delete(src.chans, best, best+1)
		src.count--
		src.coll[c.CollectionID]--
		dst.count++
		dst.coll[c.CollectionID]++
		moves = append(moves, Move{Channel: c.Name, From: src.id, To: dst.id})
	}
	return moves
}

// ConsistentHash is a sticky policy: each channel belongs to the node that
// follows its name's hash on a ring of vnodes virtual points per node
// (vnodes <= 0 means 128). A channel stays on its node while that node
// serves, and a joining or leaving node moves only the channels whose ring
// owner changes. Place skips the Avoid node while another exists; Balance
// moves Movable channels to their ring owner. Loads are as even as hashing
// makes them, not within 1.
func ConsistentHash(vnodes int) Policy {
	if vnodes <= 0 {
		vnodes = 128
	}
	return consistentHash{vnodes: vnodes}
}

type consistentHash struct{ vnodes int }

type ringPoint struct {
	hash uint64
	node int64
}

func hash64(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	// fnv alone clusters on similar names (ch_1, ch_2); finish with a mixer.
	x := h.Sum64()
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

func (p consistentHash) ring(nodes []NodeLoad) []ringPoint {
	r := make([]ringPoint, 0, len(nodes)*p.vnodes)
	for _, n := range nodes {
		id := strconv.FormatInt(n.ID, 10)
		for v := 0; v < p.vnodes; v++ {
			r = append(r, ringPoint{hash: hash64(id + "#" + strconv.Itoa(v)), node: n.ID})
		}
	}
	slices.SortFunc(r, func(a, b ringPoint) int {
		if c := cmp.Compare(a.hash, b.hash); c != 0 {
			return c
		}
		return cmp.Compare(a.node, b.node)
	})
	return r
}

// owner returns the first ring node at or after name's hash that is not
// avoid (avoid is ignored when it is the only node).
func owner(r []ringPoint, name string, avoid int64) int64 {
	h := hash64(name)
	start, _ := slices.BinarySearchFunc(r, h, func(p ringPoint, h uint64) int { return cmp.Compare(p.hash, h) })
	for i := 0; i < len(r); i++ {
		p := r[(start+i)%len(r)]
		if avoid == 0 || p.node != avoid {
			return p.node
		}
	}
	return r[start%len(r)].node
}

func (p consistentHash) Place(chs []Channel, nodes []NodeLoad) []int64 {
	out := make([]int64, len(chs))
	if len(nodes) == 0 {
		return out
	}
	r := p.ring(nodes)
	for i, c := range chs {
		out[i] = owner(r, c.Name, c.Avoid)
	}
	return out
}

func (p consistentHash) Balance(nodes []NodeLoad, maxMoves int) []Move {
	if len(nodes) < 2 {
		return nil
	}
	r := p.ring(nodes)
	rings := map[string][]ringPoint{}
	var moves []Move
	for _, n := range nodes {
		for _, c := range n.Channels {
			if len(moves) >= maxMoves {
				return moves
			}
			if !c.Movable {
				continue
			}
			cr := r
			if !c.Require.IsZero() { // the ring Place saw: the nodes that meet it
				key := c.Require.String()
				if rings[key] == nil {
					rings[key] = p.ring(eligible(nodes, c))
				}
				cr = rings[key]
			}
			if len(cr) == 0 {
				continue
			}
			if o := owner(cr, c.Name, 0); o != n.ID {
				moves = append(moves, Move{Channel: c.Name, From: n.ID, To: o})
			}
		}
	}
	return moves
}
