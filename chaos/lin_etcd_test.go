package chaos

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/internal/netproxy"
	"github.com/chanwatch/chanwatch/kv"
)

// TestLinearizabilityEtcd: eight clients, each on its own connection through
// its own proxy, against etcd (one in-process member; three bin/etcd
// processes in the long version). Faults: a client's connection
// blackholed (its requests may land after it gave up) or reset, and in the
// long version a member SIGKILLed and restarted.
func TestLinearizabilityEtcd(t *testing.T) {
	parallelShort(t)
	r := newReport(t)
	etcd := startEtcd(t)
	root := uniqueRoot(t)
	const n = 8
	clients := make([]func() kv.KV, n)
	proxies := make([][]*netproxy.Proxy, n)
	for i := range n {
		cli, ps := etcd.client(t, true)
		b := etcd.backend(t, cli, root)
		clients[i] = func() kv.KV { return b }
		proxies[i] = ps
	}
	w := linWorkload{clients: n, opsPerClient: scale(150, 1000), keys: 4, opTimeout: scale(300*time.Millisecond, time.Second)}
	linTest(t, r, w, clients, func(ctx context.Context, rng *rand.Rand) {
		for pace(ctx, jitter(rng, 50*time.Millisecond, 300*time.Millisecond)) {
			switch k := rng.IntN(4); {
			case k == 0 && etcd.kill != nil:
				m := rng.IntN(etcd.members())
				r.fault("etcd member %d SIGKILL", m)
				if err := etcd.kill(m); err != nil {
					t.Errorf("kill member %d: %v", m, err)
					return
				}
				pace(ctx, jitter(rng, 200*time.Millisecond, time.Second))
				r.note("etcd member %d restart", m)
				if err := etcd.restart(m); err != nil {
					t.Errorf("restart member %d: %v", m, err)
					return
				}
			case k <= 2:
				c := rng.IntN(n)
				r.fault("client %d blackholed", c)
				setMode(proxies[c], netproxy.Blackhole)
				pace(ctx, jitter(rng, 200*time.Millisecond, 800*time.Millisecond))
				setMode(proxies[c], netproxy.Pass)
				r.note("client %d healed", c)
			default:
				c := rng.IntN(n)
				r.fault("client %d reset", c)
				setMode(proxies[c], netproxy.Reset)
				pace(ctx, jitter(rng, 10*time.Millisecond, 100*time.Millisecond))
				setMode(proxies[c], netproxy.Pass)
			}
		}
	})
}
