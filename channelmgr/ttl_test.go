package channelmgr

import (
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/chanwatch/chanwatch/meta"
)

// A node advertising a TTL longer than WithNodeTTL is logged, and the
// longer TTL becomes the wait for a node whose TTL is unknown: the channel
// of a node that died before this coordinator started waits one advertised
// TTL (10 s) into the term, not WithNodeTTL (2 s).
func TestAdvertisedTTLLongerThanConfigured(t *testing.T) {
	h := newHarness(t)
	a := h.addNode() // advertises nodeTTL
	const dead = 99  // died before the coordinator started; its TTL is unknown
	h.register(1, "d1")
	h.putInfo(dead, meta.ChannelInfo{Name: "d1", CollectionID: 1, State: meta.Watched})
	core, logs := observer.New(zapcore.WarnLevel)
	const configured = nodeTTL / 5
	c := h.lead(WithNodeTTL(configured), WithLogger(zap.New(core)))
	warned := logs.FilterMessageSnippet("longer than WithNodeTTL").All()
	if len(warned) != 1 {
		t.Fatalf("%d warnings about node %d's TTL, want 1: %v", len(warned), a.id, logs.All())
	}
	if f := warned[0].ContextMap(); f["node"] != a.id || f["node_ttl"] != nodeTTL || f["configured"] != configured {
		t.Fatalf("warning fields %v, want node %d, node_ttl %v, configured %v", f, a.id, nodeTTL, configured)
	}
	h.advance(nodeTTL-step, c)
	if as := h.assignments()["d1"]; as.node != dead {
		t.Fatalf("d1 moved to node %d %v into the term, before the advertised TTL %v\n%s", as.node, nodeTTL-step, nodeTTL, h.dump())
	}
	h.advance(2*step, c)
	h.eventually("d1 Watched on the live node", func() bool { return h.allWatched([]string{"d1"}, a.id) })
}

// A node's own advertised TTL is the wait for its own channels, even when
// shorter than WithNodeTTL: it is the TTL its lease was granted with, and
// waiting longer protects nothing. (Unknown TTLs still get WithNodeTTL.)
func TestOwnTTLUsedWhenShorter(t *testing.T) {
	h := newHarness(t)
	c := h.lead(WithNodeTTL(3 * nodeTTL))
	r := &reconciler{cfg: &c.cfg, nodes: map[int64]*nodeRT{}}
	r.node(1).ttl = nodeTTL
	if got := r.nodeTTL(1); got != nodeTTL {
		t.Fatalf("nodeTTL(1) = %v, want its own %v", got, nodeTTL)
	}
	if got := r.nodeTTL(2); got != 3*nodeTTL {
		t.Fatalf("nodeTTL(2) (unknown) = %v, want WithNodeTTL %v", got, 3*nodeTTL)
	}
	r.maxTTL = 4 * nodeTTL
	if got := r.nodeTTL(2); got != 4*nodeTTL {
		t.Fatalf("nodeTTL(2) (unknown) = %v, want the longest advertised %v", got, 4*nodeTTL)
	}
}
