package conformance

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// churnRounds is ChurnRounds, or the default for the clock: a fake clock
// makes rounds cheap; on real time each costs up to a TTL.
func (m *mep) churnRounds() int {
	if ChurnRounds > 0 {
		return ChurnRounds
	}
	if m.real() {
		return 30
	}
	return 60
}

// mepRandomizedChurn drives the cluster through seeded random joins,
// crashes, partitions, graceful stops, registrations, deregistrations and
// coordinator failovers, with the invariants checked throughout and
// invariant (4) every ten rounds and at the end.
func mepRandomizedChurn(t *testing.T, m *mep) {
	seed := ChurnSeed
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	rounds := m.churnRounds()
	t.Logf("RandomizedChurn: -seed=%d -rounds=%d", seed, rounds)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("RandomizedChurn failed; rerun with: go test ./conformance -run '%s' -args -seed=%d -rounds=%d", t.Name(), seed, rounds)
		}
	})
	rng := rand.New(rand.NewPCG(uint64(seed), 0x6368616e))
	c := &churn{m: m, rng: rng}
	c.nodes = append(c.nodes, m.startNode(), m.startNode())
	c.coords = append(c.coords, m.leaderCoord())
	for r := range rounds {
		c.step(r)
		m.requireNoViolations()
		if r%10 == 9 {
			c.converge()
		}
	}
	c.converge()
}

type churn struct {
	m           *mep
	rng         *rand.Rand
	nodes       []*mepNode // alive (maybe partitioned)
	partitioned []*mepNode
	coords      []*mepCoord
	registered  []string
	next        int
}

func (c *churn) pickNode() (int, *mepNode) {
	i := c.rng.IntN(len(c.nodes))
	return i, c.nodes[i]
}

func (c *churn) dropNode(i int) {
	n := c.nodes[i]
	c.nodes = append(c.nodes[:i], c.nodes[i+1:]...)
	for j, p := range c.partitioned {
		if p == n {
			c.partitioned = append(c.partitioned[:j], c.partitioned[j+1:]...)
			break
		}
	}
}

func (c *churn) isPartitioned(n *mepNode) bool {
	for _, p := range c.partitioned {
		if p == n {
			return true
		}
	}
	return false
}

func (c *churn) step(r int) {
	m := c.m
	op := c.rng.IntN(100)
	switch {
	case op < 14 && len(c.nodes) < 6:
		m.t.Logf("round %d: join", r)
		c.nodes = append(c.nodes, m.startNode(noWait()))
	case op < 24 && len(c.nodes) > 0:
		i, n := c.pickNode()
		m.t.Logf("round %d: crash %s (id %d)", r, n.name, n.ID())
		m.crashNode(n)
		c.dropNode(i)
	case op < 29 && len(c.nodes) > 1:
		i, n := c.pickNode()
		if c.isPartitioned(n) || n.ID() == 0 {
			return
		}
		m.t.Logf("round %d: graceful stop of %s (id %d)", r, n.name, n.ID())
		c.ensureCoordinator()
		c.ensureHealthyOtherThan(n)
		m.stopNode(n)
		c.dropNode(i)
	case op < 35 && len(c.nodes) > 0:
		_, n := c.pickNode()
		if c.isPartitioned(n) {
			m.t.Logf("round %d: heal %s", r, n.name)
			n.kv.Heal()
			for j, p := range c.partitioned {
				if p == n {
					c.partitioned = append(c.partitioned[:j], c.partitioned[j+1:]...)
					break
				}
			}
			return
		}
		m.t.Logf("round %d: partition %s (id %d)", r, n.name, n.ID())
		n.kv.Partition()
		c.partitioned = append(c.partitioned, n)
	case op < 55:
		k := 1 + c.rng.IntN(5)
		var chs []string
		for range k {
			chs = append(chs, fmt.Sprintf("churn-%04d", c.next))
			c.next++
		}
		m.t.Logf("round %d: register %v", r, chs)
		m.register(int64(1+c.rng.IntN(4)), chs...)
		c.registered = append(c.registered, chs...)
	case op < 65 && len(c.registered) > 0:
		i := c.rng.IntN(len(c.registered))
		ch := c.registered[i]
		m.t.Logf("round %d: deregister %s", r, ch)
		m.deregister(ch)
		c.registered = append(c.registered[:i], c.registered[i+1:]...)
	case op < 74 && len(c.coords) > 0:
		// Crash whoever leads (or a standby when nobody does yet).
		i := 0
		for j, co := range c.coords {
			if co.c.IsLeader() {
				i = j
			}
		}
		co := c.coords[i]
		m.t.Logf("round %d: crash coordinator %s (leader %v)", r, co.name, co.c.IsLeader())
		m.crashCoord(co)
		c.coords = append(c.coords[:i], c.coords[i+1:]...)
		if len(c.coords) == 0 || c.rng.IntN(2) == 0 {
			c.coords = append(c.coords, m.startCoord())
		}
	case op < 80 && len(c.coords) < 3:
		m.t.Logf("round %d: start a standby coordinator", r)
		c.coords = append(c.coords, m.startCoord())
	default:
		d := time.Duration(c.rng.Int64N(int64(2 * m.tm.nodeTTL)))
		if m.real() {
			d /= 4
		}
		m.t.Logf("round %d: let %v pass", r, d)
		m.elapse(d)
	}
}

// ensureCoordinator starts a coordinator when none is alive.
func (c *churn) ensureCoordinator() {
	if len(c.coords) == 0 {
		c.coords = append(c.coords, c.m.startCoord())
	}
}

// ensureHealthyOtherThan makes sure a healthy node other than n exists, so
// that a graceful stop of n can be drained.
func (c *churn) ensureHealthyOtherThan(n *mepNode) {
	for _, o := range c.nodes {
		if o != n && !c.isPartitioned(o) && o.ID() != 0 {
			return
		}
	}
	c.nodes = append(c.nodes, c.m.startNode())
}

// converge heals everything, makes sure one node and one coordinator run,
// and waits for invariant (4).
func (c *churn) converge() {
	m := c.m
	for _, n := range c.partitioned {
		n.kv.Heal()
	}
	c.partitioned = nil
	if len(c.nodes) == 0 {
		c.nodes = append(c.nodes, m.startNode())
	}
	c.ensureCoordinator()
	m.t.Logf("converging: %d nodes, %d coordinators, %d channels", len(c.nodes), len(c.coords), len(c.registered))
	m.settle()
}
