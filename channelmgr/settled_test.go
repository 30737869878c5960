package channelmgr

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"pgregory.net/rapid"
)

// The fast path for settled channels decides exactly as the general path:
// on stores mixing settled channels with every other kind (each state, a
// failed attempt, a corrupt value, a second key, an unregistered key, a
// remaining key, a preparation, a draining node, a gone node, a node
// under quarantine or probing, an evicted node, keys made for an earlier
// session of a node ID, nodes that prepare, a move budget, and calm
// stores where every channel runs and balance starts moves, some of them
// warm), two leaders that differ only in the fast path plan the
// same pass: the same counts, loads (movable flags included), writes,
// placements and evictions, the same wake-up, and keep the same runtime
// records and node health afterwards. balance checks a move against the
// pass's Movable flags (movableKey): on a pass that has nothing pending
// they agree for every channel of every load, and some runs start moves.
func TestSettledFastPathDecidesAsTheGeneralPath(t *testing.T) {
	balanced := 0
	rapid.Check(t, func(rt *rapid.T) {
		h := newHarness(t)
		ctx := h.ctx
		nodes := rapid.IntRange(1, 5).Draw(rt, "nodes")
		// calm: every channel registered and running, most on node 1, so
		// that the pass has nothing to write and balance moves channels.
		calm := rapid.IntRange(0, 2).Draw(rt, "calm") == 0
		// Keys made for an earlier holder of a node ID: written before
		// the node's current session key.
		for i := range rapid.IntRange(0, 3).Draw(rt, "stale keys") {
			ch := fmt.Sprintf("ch-s%d", i)
			h.register(1, ch)
			info := meta.ChannelInfo{Name: ch, CollectionID: 1, StartTime: h.clk.Now(), State: meta.Watched, AssignRevision: 1}
			if rapid.IntRange(0, 3).Draw(rt, "stale odd state") == 0 {
				info.State = meta.State(rapid.IntRange(int(meta.ToWatch), int(meta.ReleaseFailure)).Draw(rt, "stale state"))
			}
			val, err := meta.EncodeChannelInfo(info)
			if err != nil {
				rt.Fatal(err)
			}
			if _, err := kv.Put(ctx, h.kv, meta.ChannelKey(int64(rapid.IntRange(1, nodes).Draw(rt, "stale node")), ch), val); err != nil {
				rt.Fatal(err)
			}
		}
		kind := make([]string, nodes+2) // node IDs 1..nodes+1; the last has no session (gone)
		for id := 1; id <= nodes; id++ {
			kind[id] = rapid.SampledFrom([]string{"serving", "serving", "serving", "stopping", "evicted"}).Draw(rt, "kind")
			lease, err := h.kv.Grant(ctx, time.Hour)
			if err != nil {
				rt.Fatal(err)
			}
			st := meta.NodeServing
			switch kind[id] {
			case "stopping":
				st = meta.NodeStopping
			case "evicted":
				st = meta.NodeEvicted
			}
			v, err := meta.EncodeNodeSession(meta.NodeSession{ID: int64(id), StartTime: h.clk.Now(), State: st, TTL: nodeTTL,
				Prepare: rapid.Bool().Draw(rt, "prepares")})
			if err != nil {
				rt.Fatal(err)
			}
			if _, err := h.kv.Txn(ctx, kv.Txn{Then: []kv.Op{kv.OpPutLease(meta.NodeSessionKey(int64(id)), v, lease)}}); err != nil {
				rt.Fatal(err)
			}
		}
		if rapid.Bool().Draw(rt, "quarantine") {
			// Until in the future: quarantined; in the past: probing.
			until := h.clk.Now().Add(time.Duration(rapid.IntRange(-120, 120).Draw(rt, "quarantine until")) * time.Second)
			q, err := meta.EncodeQuarantine(meta.Quarantine{Node: int64(rapid.IntRange(1, nodes).Draw(rt, "quarantined node")),
				Reason: "test", Failures: 3, Quarantines: 1, Since: h.clk.Now().Add(-3 * time.Minute), Until: until})
			if err != nil {
				rt.Fatal(err)
			}
			if _, err := kv.Put(ctx, h.kv, meta.QuarantineKey(1), q); err != nil {
				rt.Fatal(err)
			}
		}
		chans := rapid.IntRange(1, 40).Draw(rt, "channels")
		for i := range chans {
			ch := fmt.Sprintf("ch-%02d", i)
			if calm || rapid.IntRange(0, 9).Draw(rt, "registered") > 0 {
				h.register(int64(i%3+1), ch)
			}
			keys := rapid.IntRange(0, 2).Draw(rt, "keys")
			if calm || rapid.IntRange(0, 3).Draw(rt, "settled") > 0 {
				keys = 1
			}
			for range keys {
				node := int64(rapid.IntRange(0, nodes+1).Draw(rt, "node"))
				if calm {
					node = 1
					if rapid.IntRange(0, 3).Draw(rt, "elsewhere") == 0 {
						node = int64(rapid.IntRange(1, nodes).Draw(rt, "calm node"))
					}
				}
				info := meta.ChannelInfo{Name: ch, CollectionID: int64(i%3 + 1), StartTime: h.clk.Now(),
					State: meta.Watched, AssignRevision: 1}
				if calm {
					if rapid.IntRange(0, 9).Draw(rt, "calm starting") == 0 {
						info.State = meta.ToWatch // no write until its watch timeout
					}
				} else if rapid.IntRange(0, 3).Draw(rt, "odd state") == 0 {
					info.State = meta.State(rapid.IntRange(int(meta.ToWatch), int(meta.ReleaseFailure)).Draw(rt, "state"))
				}
				if !calm && rapid.IntRange(0, 5).Draw(rt, "failed before") == 0 {
					info.Attempts, info.FailedNode, info.LastError = 1, 1, "boom"
				}
				val, err := meta.EncodeChannelInfo(info)
				if err != nil {
					rt.Fatal(err)
				}
				if !calm && rapid.IntRange(0, 15).Draw(rt, "corrupt") == 0 {
					val = []byte("{not json")
				}
				if _, err := kv.Put(ctx, h.kv, meta.ChannelKey(node, ch), val); err != nil {
					rt.Fatal(err)
				}
			}
			if !calm && rapid.IntRange(0, 9).Draw(rt, "prepare") == 0 {
				v, err := meta.EncodePrepareInfo(meta.ChannelInfo{Name: ch, CollectionID: 1, State: meta.ToPrepare, StartTime: h.clk.Now()})
				if err != nil {
					rt.Fatal(err)
				}
				if _, err := kv.Put(ctx, h.kv, meta.PrepareKey(int64(nodes), ch), v); err != nil {
					rt.Fatal(err)
				}
			}
		}
		h.clk.Advance(time.Duration(rapid.IntRange(0, 120).Draw(rt, "seconds")) * time.Second)

		var opts []Option
		if rapid.Bool().Draw(rt, "budget") {
			opts = append(opts, WithMoveBudget(rapid.IntRange(1, 3).Draw(rt, "per window"), time.Minute),
				WithNodeMoveLimit(rapid.IntRange(0, 2).Draw(rt, "per node")))
		}
		opts = append(opts, WithMaxMovesInFlight(rapid.IntRange(1, 8).Draw(rt, "moves in flight")))
		fast := newTestReconciler(t, h, opts...)
		slow := newTestReconciler(t, h, opts...)
		slow.noSettled = true
		now := h.clk.Now()
		pf, ps := fast.decide(now), slow.decide(now)
		if !pf.pending {
			for id, l := range pf.loads {
				for _, c := range l.Channels {
					if len(fast.v.prepares[c.Name]) > 0 {
						continue // withdrawn this pass (no balance), or kept: not Movable
					}
					if k := fast.movableKey(pf, c.Name, id, now); c.Movable != (k != nil) {
						rt.Fatalf("%s on node %d: Movable %v, movableKey %v", c.Name, id, c.Movable, k)
					}
				}
			}
		}
		for _, u := range pf.units {
			// Only a balance move writes for a registered channel with one
			// key, Watched on its owner, a serving node.
			if s := fast.v.keys[u.ch]; fast.v.registry[u.ch] != nil && len(s) == 1 && !s[0].corrupt && s[0].info.State == meta.Watched {
				if ne, owned := fast.owner(s[0]); owned && ne.serving() {
					balanced++
				}
			}
		}
		fast.forgetIdle()
		slow.forgetIdle()
		if d := planDiff(pf, ps); d != "" {
			rt.Fatalf("the fast path planned differently:\n%s", d)
		}
		if !fast.wake.Equal(slow.wake) {
			rt.Fatalf("wake-up %v, general path %v", fast.wake, slow.wake)
		}
		if !reflect.DeepEqual(fast.chans, slow.chans) {
			rt.Fatalf("runtime records %v, general path %v", keysOf(fast.chans), keysOf(slow.chans))
		}
		if fmt.Sprint(healthOf(fast)) != fmt.Sprint(healthOf(slow)) {
			rt.Fatalf("node health %v, general path %v", healthOf(fast), healthOf(slow))
		}
	})
	if balanced == 0 {
		t.Fatal("no run started a balance move: the generator misses calm stores")
	}
	t.Logf("%d balance moves planned", balanced)
}

func keysOf(m map[string]*chanRT) []string {
	var out []string
	for k, v := range m {
		out = append(out, fmt.Sprintf("%s:%+v", k, *v))
	}
	slices.Sort(out)
	return out
}

func healthOf(r *reconciler) []string {
	var out []string
	for id, h := range r.health {
		out = append(out, fmt.Sprintf("%d:%+v", id, *h))
	}
	slices.Sort(out)
	return out
}

// planDiff describes how two plans differ, or returns "".
func planDiff(a, b *plan) string {
	var d []string
	cmp := func(what string, x, y any) {
		if !reflect.DeepEqual(x, y) {
			d = append(d, fmt.Sprintf("%s: %v\n  general path: %v", what, x, y))
		}
	}
	cmp("counts", a.counts, b.counts)
	cmp("pending", a.pending, b.pending)
	cmp("releasing", a.releasing, b.releasing)
	loads := func(p *plan) map[int64]string {
		out := map[int64]string{}
		for id, l := range p.loads {
			out[id] = fmt.Sprintf("%+v", l.Channels)
		}
		return out
	}
	cmp("loads", loads(a), loads(b))
	units := func(p *plan) []string {
		var out []string
		for _, u := range p.units {
			out = append(out, fmt.Sprintf("%s %v %v", u.ch, u.cmps, u.ops))
		}
		return out
	}
	cmp("units", units(a), units(b))
	places := func(p *plan) []string {
		var out []string
		for _, pl := range p.place {
			out = append(out, fmt.Sprintf("%s avoid=%d pref=%d dead=%v", pl.ch, pl.avoid, pl.pref, pl.dead))
		}
		return out
	}
	cmp("placements", places(a), places(b))
	evictions := func(p *plan) []string {
		var out []string
		for _, e := range p.evictions {
			out = append(out, fmt.Sprintf("%d %s", e.node, e.why))
		}
		return out
	}
	cmp("evictions", evictions(a), evictions(b))
	return strings.Join(d, "\n")
}
