package conformance_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/chanwatch/chanwatch/conformance"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/raftkv"
)

// runRaft runs the KV suite on raftkv.
func runRaft(t *testing.T) { conformance.RunKV(t, raftFactory(t)) }

// raftFactory starts one 3-node raftkv cluster on loopback for the run (a
// second a cluster: one per scenario would cost a minute), with lease
// deadlines on a fake clock and fsync off. Each Env gets its own root, as
// on etcd, and binds its handles to the leader or, for every other Env, to
// a follower, so forwarding is held to the same contract.
func raftFactory(t *testing.T) conformance.Factory {
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
	var mu sync.Mutex
	envs := map[string]int{} // Envs per test, for distinct roots
	all := 0
	return func(t testing.TB) conformance.Env {
		t.Helper()
		mu.Lock()
		envs[t.Name()]++
		root := fmt.Sprintf("conformance/%s/%s", t.Name(), strings.Repeat("r", envs[t.Name()]))
		all++
		toFollower := all%2 == 0
		mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		l, err := c.WaitLeader(ctx)
		if err != nil {
			t.Fatalf("raftkv leader: %v", err)
		}
		node := c.Node(l)
		if toFollower {
			node = c.Node((l + 1) % c.Len())
		}
		return conformance.Env{
			Open: func(t testing.TB) kv.Backend {
				t.Helper()
				h, err := node.ClientAt(root)
				if err != nil {
					t.Fatalf("raftkv client: %v", err)
				}
				t.Cleanup(func() { closeHandle(t, h) })
				return h
			},
			Clock: clock,
		}
	}
}
