package conformance_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/chanwatch/chanwatch/conformance"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/raftkv"
)

// raftEnvs counts raft Envs: every other one binds its handles to a
// follower, so forwarding is held to the same contract as the leader.
var raftEnvs atomic.Int64

// raftFactory gives each scenario a fresh 3-node raftkv cluster on
// loopback, with lease deadlines on a fake clock. raftkv has no key root,
// so isolation comes from separate clusters.
func raftFactory(t testing.TB) conformance.Env {
	t.Helper()
	clock := clockwork.NewFakeClock()
	c, err := raftkv.StartCluster(t.TempDir(), 3, raftkv.WithClock(clock), raftkv.WithUnsafeNoFsync(true))
	if err != nil {
		t.Fatalf("start raftkv cluster: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close raftkv cluster: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatalf("raftkv leader: %v", err)
	}
	node := c.Node(l)
	if raftEnvs.Add(1)%2 == 0 {
		node = c.Node((l + 1) % c.Len())
	}
	return conformance.Env{
		Open: func(t testing.TB) kv.Backend {
			h := node.Client()
			t.Cleanup(func() { closeHandle(t, h) })
			return h
		},
		Clock: clock,
	}
}
