package chaos

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
)

// TestLinearizabilityRaftkv: eight clients spread over a 3-node raftkv
// cluster. Faults: the leader killed and restarted from its directory; a
// node's inbound traffic blackholed (a one-way partition: the others cannot
// reach it, nor it the leader's answers to what it forwards) or reset.
func TestLinearizabilityRaftkv(t *testing.T) {
	parallelShort(t)
	r := newReport(t)
	c := startRaft(t, 3)
	clients := make([]func() kv.KV, 3)
	for i := range clients {
		clients[i] = func() kv.KV { return c.node(i) }
	}
	w := linWorkload{clients: 8, opsPerClient: scale(80, 1000), keys: 4, opTimeout: 2 * time.Second} // 1s short timed out most ops on a loaded machine (make test-load)
	linTest(t, r, w, clients, func(ctx context.Context, rng *rand.Rand) {
		for pace(ctx, jitter(rng, 100*time.Millisecond, 400*time.Millisecond)) {
			switch k := rng.IntN(3); k {
			case 0:
				l := c.leader()
				if l < 0 {
					continue
				}
				r.fault("raftkv leader %d killed", l)
				if err := c.kill(l); err != nil {
					t.Errorf("kill %d: %v", l, err)
				}
				pace(ctx, jitter(rng, 300*time.Millisecond, time.Second))
				r.note("raftkv node %d restarted", l)
				if err := c.restart(l); err != nil {
					t.Errorf("restart %d: %v", l, err)
					return
				}
			case 1:
				i := rng.IntN(3)
				r.fault("raftkv node %d inbound blackholed", i)
				c.proxies[i].Blackhole()
				pace(ctx, jitter(rng, 300*time.Millisecond, time.Second))
				c.proxies[i].Pass()
				r.note("raftkv node %d healed", i)
			default:
				i := rng.IntN(3)
				r.fault("raftkv node %d inbound reset", i)
				c.proxies[i].Reset()
				pace(ctx, jitter(rng, 10*time.Millisecond, 100*time.Millisecond))
				c.proxies[i].Pass()
			}
		}
	})
}
