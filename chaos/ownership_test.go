package chaos

import (
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/internal/netproxy"
)

// TestNoDoubleOwnershipPartition: a node cut from etcd by the proxy for 1.5x
// its lease TTL must stop every channel (self-fence) before the coordinator
// reassigns them: the ownership intervals of the partitioned node and of the
// node that takes its channels over never overlap, tokens only grow and
// one node holds each token. After the partition heals the node comes back
// under a new ID and the cluster converges.
func TestNoDoubleOwnershipPartition(t *testing.T) {
	r := newReport(t)
	l := newLedger(r)
	etcd := startEtcd(t)
	root := uniqueRoot(t)
	tm := fastTiming(2 * etcd.minTTL)
	obsCli, _ := etcd.client(t, false)
	obs := etcd.backend(t, obsCli, root)

	coordCli, _ := etcd.client(t, false)
	coord := startCoord(t, "coord", etcd.backend(t, coordCli, root), func() {}, tm)
	defer coord.stop()

	cutCli, cutProxies := etcd.client(t, true)
	cut := startNode(t, l, "cut", etcd.backend(t, cutCli, root), func() {}, tm)
	defer cut.stop()
	okCli, _ := etcd.client(t, false)
	ok := startNode(t, l, "ok", etcd.backend(t, okCli, root), func() {}, tm)
	defer ok.stop()

	nodes := []*member{cut, ok}
	registerChannels(t, obs, channelNames("p", scale(8, 32))...)
	awaitConvergence(t, r, obs, nodes, l, tm.ttl, 30*time.Second, time.Now())

	rounds := scale(1, 5)
	for round := range rounds {
		oldID := cut.node.ID()
		r.fault("round %d: node cut (id %d) blackholed for 1.5 TTL (%v)", round, oldID, 3*tm.ttl/2)
		setMode(cutProxies, netproxy.Blackhole)
		pace(testCtx(t), 3*tm.ttl/2)
		setMode(cutProxies, netproxy.Pass)
		healed := time.Now()
		r.note("healed")
		// The node's lease expired (1.5 TTL > TTL): it must come back
		// under a new ID.
		eventually(t, 30*time.Second, "node cut re-registered", func() bool { return cut.node.ID() > oldID })
		awaitConvergence(t, r, obs, nodes, l, tm.ttl, 30*time.Second, healed)
	}
	l.figures()
	if l.starts["ok"] == 0 {
		t.Fatal("no channel moved to the healthy node: the partition tested nothing")
	}
}
