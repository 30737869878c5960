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
// under quarantine), two leaders that differ only in the fast path plan the
// same pass: the same counts, loads (movable flags included), writes,
// placements and evictions, the same wake-up, and keep the same runtime
// records and node health afterwards.
func TestSettledFastPathDecidesAsTheGeneralPath(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		h := newHarness(t)
		ctx := h.ctx
		nodes := rapid.IntRange(1, 5).Draw(rt, "nodes")
		kind := make([]string, nodes+2) // node IDs 1..nodes+1; the last has no session (gone)
		for id := 1; id <= nodes; id++ {
			kind[id] = rapid.SampledFrom([]string{"serving", "serving", "serving", "stopping"}).Draw(rt, "kind")
			lease, err := h.kv.Grant(ctx, time.Hour)
			if err != nil {
				rt.Fatal(err)
			}
			st := meta.NodeServing
			if kind[id] == "stopping" {
				st = meta.NodeStopping
			}
			v, err := meta.EncodeNodeSession(meta.NodeSession{ID: int64(id), StartTime: h.clk.Now(), State: st, TTL: nodeTTL})
			if err != nil {
				rt.Fatal(err)
			}
			if _, err := h.kv.Txn(ctx, kv.Txn{Then: []kv.Op{kv.OpPutLease(meta.NodeSessionKey(int64(id)), v, lease)}}); err != nil {
				rt.Fatal(err)
			}
		}
		if rapid.Bool().Draw(rt, "quarantine") {
			q, err := meta.EncodeQuarantine(meta.Quarantine{Node: 1, Reason: "test", Failures: 3, Quarantines: 1,
				Since: h.clk.Now().Add(-time.Minute), Until: h.clk.Now().Add(time.Minute)})
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
			if rapid.IntRange(0, 9).Draw(rt, "registered") > 0 {
				h.register(int64(i%3+1), ch)
			}
			keys := rapid.IntRange(0, 2).Draw(rt, "keys")
			if rapid.IntRange(0, 3).Draw(rt, "settled") > 0 {
				keys = 1
			}
			for range keys {
				node := int64(rapid.IntRange(0, nodes+1).Draw(rt, "node"))
				info := meta.ChannelInfo{Name: ch, CollectionID: int64(i%3 + 1), StartTime: h.clk.Now(),
					State: meta.Watched, AssignRevision: 1}
				if rapid.IntRange(0, 3).Draw(rt, "odd state") == 0 {
					info.State = meta.State(rapid.IntRange(int(meta.ToWatch), int(meta.ReleaseFailure)).Draw(rt, "state"))
				}
				if rapid.IntRange(0, 5).Draw(rt, "failed before") == 0 {
					info.Attempts, info.FailedNode, info.LastError = 1, 1, "boom"
				}
				val, err := meta.EncodeChannelInfo(info)
				if err != nil {
					rt.Fatal(err)
				}
				if rapid.IntRange(0, 15).Draw(rt, "corrupt") == 0 {
					val = []byte("{not json")
				}
				if _, err := kv.Put(ctx, h.kv, meta.ChannelKey(node, ch), val); err != nil {
					rt.Fatal(err)
				}
			}
			if rapid.IntRange(0, 9).Draw(rt, "prepare") == 0 {
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

		fast := newTestReconciler(t, h)
		slow := newTestReconciler(t, h)
		slow.noSettled = true
		now := h.clk.Now()
		pf, ps := fast.decide(now), slow.decide(now)
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
