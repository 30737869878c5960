package channelmgr_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/channelmgr"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/memkv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/session"
)

// TestMayStop builds roots by hand and checks MayStop's verdict on each.
func TestMayStop(t *testing.T) {
	ctx := context.Background()
	type node struct {
		id    int64
		state meta.NodeState
	}
	type asg struct {
		node int64
		ch   string
		st   meta.State
	}
	cases := []struct {
		name        string
		nodes       []node
		quarantined []int64
		reg         []string
		asgs        []asg
		ask         int64
		ok          bool
		reason      string // a fragment of Reason
		channels    int
		waiting     int
	}{
		{name: "settled", nodes: []node{{1, meta.NodeServing}, {2, meta.NodeServing}}, reg: []string{"a", "b"},
			asgs: []asg{{1, "a", meta.Watched}, {2, "b", meta.Watched}}, ask: 1, ok: true, channels: 1},
		{name: "a channel is moving", nodes: []node{{1, meta.NodeServing}, {2, meta.NodeServing}}, reg: []string{"a", "b"},
			asgs: []asg{{1, "a", meta.Watched}, {2, "b", meta.ToRelease}}, ask: 1, reason: "b is ToRelease on node 2", channels: 1, waiting: 1},
		{name: "a channel is placed, not running", nodes: []node{{1, meta.NodeServing}, {2, meta.NodeServing}}, reg: []string{"a", "b"},
			asgs: []asg{{1, "a", meta.Watched}, {2, "b", meta.ToWatch}}, ask: 1, reason: "ToWatch", channels: 1, waiting: 1},
		{name: "a channel is remaining", nodes: []node{{1, meta.NodeServing}, {2, meta.NodeServing}}, reg: []string{"a", "b"},
			asgs: []asg{{1, "a", meta.Watched}, {0, "b", meta.ToWatch}}, ask: 1, reason: "remaining", channels: 1, waiting: 1},
		{name: "a channel is unassigned", nodes: []node{{1, meta.NodeServing}, {2, meta.NodeServing}}, reg: []string{"a", "b"},
			asgs: []asg{{1, "a", meta.Watched}}, ask: 1, reason: "not assigned", channels: 1, waiting: 1},
		{name: "a channel is on a gone node", nodes: []node{{1, meta.NodeServing}, {2, meta.NodeServing}}, reg: []string{"a", "b"},
			asgs: []asg{{1, "a", meta.Watched}, {3, "b", meta.Watched}}, ask: 1, reason: "gone", channels: 1, waiting: 1},
		{name: "another node still drains", nodes: []node{{1, meta.NodeServing}, {2, meta.NodeStopping}, {3, meta.NodeServing}}, reg: []string{"a", "b"},
			asgs: []asg{{1, "a", meta.Watched}, {2, "b", meta.Watched}}, ask: 1, reason: "stopping node 2", channels: 1, waiting: 1},
		{name: "the node itself still drains", nodes: []node{{1, meta.NodeStopping}, {2, meta.NodeServing}}, reg: []string{"a", "b"},
			asgs: []asg{{1, "a", meta.Watched}, {2, "b", meta.Watched}}, ask: 1, reason: "still holds 1", channels: 1},
		{name: "the node is drained", nodes: []node{{1, meta.NodeStopping}, {2, meta.NodeServing}}, reg: []string{"a", "b"},
			asgs: []asg{{2, "a", meta.Watched}, {2, "b", meta.Watched}}, ask: 1, ok: true},
		{name: "last serving node", nodes: []node{{1, meta.NodeServing}, {2, meta.NodeStopping}}, reg: []string{"a"},
			asgs: []asg{{1, "a", meta.Watched}}, ask: 1, reason: "no other serving node", channels: 1},
		{name: "the others are quarantined", nodes: []node{{1, meta.NodeServing}, {2, meta.NodeServing}}, quarantined: []int64{2}, reg: []string{"a"},
			asgs: []asg{{1, "a", meta.Watched}}, ask: 1, reason: "quarantined", channels: 1},
		{name: "an empty last node", nodes: []node{{1, meta.NodeServing}}, reg: []string{"a"},
			asgs: []asg{{0, "a", meta.ToWatch}}, ask: 1, reason: "remaining", waiting: 1},
		{name: "an unregistered leftover does not count", nodes: []node{{1, meta.NodeServing}, {2, meta.NodeServing}}, reg: []string{"a"},
			asgs: []asg{{1, "a", meta.Watched}, {2, "x", meta.ToRelease}}, ask: 1, ok: true, channels: 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := memkv.New()
			defer b.Close()
			lease, err := b.Grant(ctx, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			var ops []kv.Op
			for _, n := range tc.nodes {
				v, err := meta.EncodeNodeSession(meta.NodeSession{ID: n.id, State: n.state, TTL: time.Minute})
				if err != nil {
					t.Fatal(err)
				}
				ops = append(ops, kv.OpPutLease(meta.NodeSessionKey(n.id), v, lease))
			}
			for _, id := range tc.quarantined {
				v, err := meta.EncodeQuarantine(meta.Quarantine{Node: id, Reason: "test"})
				if err != nil {
					t.Fatal(err)
				}
				ops = append(ops, kv.OpPut(meta.QuarantineKey(id), v))
			}
			for _, ch := range tc.reg {
				v, err := meta.EncodeChannelSpec(meta.ChannelSpec{Name: ch, CollectionID: 1})
				if err != nil {
					t.Fatal(err)
				}
				ops = append(ops, kv.OpPut(meta.RegistryKey(ch), v))
			}
			for _, a := range tc.asgs {
				v, err := meta.EncodeChannelInfo(meta.ChannelInfo{Name: a.ch, CollectionID: 1, State: a.st})
				if err != nil {
					t.Fatal(err)
				}
				key := meta.ChannelKey(a.node, a.ch)
				if a.node == 0 {
					key = meta.RemainingKey(a.ch)
				}
				ops = append(ops, kv.OpPut(key, v))
			}
			if _, err := b.Txn(ctx, kv.Txn{Then: ops}); err != nil {
				t.Fatal(err)
			}
			got, err := channelmgr.MayStop(ctx, b, tc.ask)
			if err != nil {
				t.Fatal(err)
			}
			if got.OK != tc.ok || !strings.Contains(got.Reason, tc.reason) || got.Channels != tc.channels || got.Waiting != tc.waiting {
				t.Fatalf("MayStop(%d) = %+v; want ok %v, reason containing %q, %d channels, %d waiting",
					tc.ask, got, tc.ok, tc.reason, tc.channels, tc.waiting)
			}
			if got.OK != (got.Reason == "") {
				t.Fatalf("OK %v with reason %q", got.OK, got.Reason)
			}
		})
	}
	b := memkv.New()
	defer b.Close()
	if _, err := channelmgr.MayStop(ctx, b, 7); !errors.Is(err, session.ErrNodeNotFound) {
		t.Fatalf("MayStop(unknown) = %v, want session.ErrNodeNotFound", err)
	}
	if _, err := channelmgr.MayStop(ctx, b, 0); !errors.Is(err, meta.ErrInvalidNodeID) {
		t.Fatalf("MayStop(0) = %v, want meta.ErrInvalidNodeID", err)
	}
}
