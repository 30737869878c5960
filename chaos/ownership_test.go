package chaos

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/channelmgr"
	"github.com/chanwatch/chanwatch/internal/netproxy"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/raftkv"
	"github.com/chanwatch/chanwatch/nodewatch"
)

// TestNoDoubleOwnershipPartition: a node process cut from etcd by the proxy
// for 1.5x its lease TTL must stop every channel (self-fence) before the
// coordinator reassigns them: the ownership intervals of the partitioned
// node and of the node that takes its channels over never overlap, tokens
// only grow and one node holds each token. After the partition heals the
// node comes back under a new ID and the cluster converges. The process
// (chaos/internal/chaosnode) reports its handler's effects to the test's
// ledger over a path the partition does not cut, as a node cut off from
// etcd may still reach its downstream.
func TestNoDoubleOwnershipPartition(t *testing.T) {
	r := newReport(t)
	l := newLedger(r)
	etcd := startEtcd(t)
	root := uniqueRoot(t)
	tm := fastTiming(2 * etcd.minTTL)
	obsCli, _ := etcd.client(t, false)
	obs := etcd.backend(t, obsCli, root)
	url := serveLedger(t, l)

	coordCli, _ := etcd.client(t, false)
	coord := startCoord(t, "coord", etcd.backend(t, coordCli, root), func() {}, tm)
	defer coord.stop()
	okCli, _ := etcd.client(t, false)
	ok := startNode(t, l, "ok", etcd.backend(t, okCli, root), func() {}, tm)
	defer ok.stop()
	cutEps, cutProxies := etcd.proxied(t)
	startProc(t, "cut", "--endpoints", strings.Join(cutEps, ","), "--root", root,
		"--session-ttl", tm.ttl.String(), "--effects", url)

	nodes := []*member{ok}
	registerChannels(t, obs, channelNames("p", scale(8, 32))...)
	eventually(t, 30*time.Second, "the process runs channels", func() bool { return l.openOf("cut") > 0 })
	awaitConvergence(t, r, obs, nodes, l, tm.ttl, 30*time.Second, time.Now())

	rounds := scale(1, 5)
	for round := range rounds {
		oldID := l.maxID("cut")
		r.fault("round %d: node process cut (id %d, %d channels) blackholed for 1.5 TTL (%v)", round, oldID, l.openOf("cut"), 3*tm.ttl/2)
		setMode(cutProxies, netproxy.Blackhole)
		pace(testCtx(t), 3*tm.ttl/2)
		setMode(cutProxies, netproxy.Pass)
		healed := time.Now()
		r.note("healed")
		// The node's lease expired (1.5 TTL > TTL): it must come back
		// under a new ID and be given channels again.
		eventually(t, 30*time.Second, "node cut runs channels under a new ID", func() bool {
			return l.maxID("cut") > oldID && l.openOf("cut") > 0
		})
		awaitConvergence(t, r, obs, nodes, l, tm.ttl, 30*time.Second, healed)
	}
	l.figures()
	if l.starts["ok"] == 0 {
		t.Fatal("no channel moved to the healthy node: the partition tested nothing")
	}
}

// TestNoDoubleOwnershipPause: a node process SIGSTOPped for 2x its lease
// TTL outlives its lease; the coordinator moves its channels with newer
// tokens. A paused process is the one case the protocol cannot stop (it
// cannot run its own fence), so the check is the fencing token: after
// SIGCONT every effect the stale node still sends carries an older token
// than the new owner's, and the downstream store rejects it; the node then
// fences itself at once, re-registers and the cluster converges.
func TestNoDoubleOwnershipPause(t *testing.T) {
	r := newReport(t)
	l := newLedger(r)
	etcd := startEtcd(t)
	root := uniqueRoot(t)
	tm := fastTiming(2 * etcd.minTTL)
	obsCli, _ := etcd.client(t, false)
	obs := etcd.backend(t, obsCli, root)
	url := serveLedger(t, l)

	coordCli, _ := etcd.client(t, false)
	coord := startCoord(t, "coord", etcd.backend(t, coordCli, root), func() {}, tm)
	defer coord.stop()
	okCli, _ := etcd.client(t, false)
	ok := startNode(t, l, "ok", etcd.backend(t, okCli, root), func() {}, tm)
	defer ok.stop()
	p := startProc(t, "paused", "--endpoints", strings.Join(etcd.endpoints, ","), "--root", root,
		"--session-ttl", tm.ttl.String(), "--effects", url)

	pauseRounds(t, r, l, p, obs, ok, tm, "process")
}

// pauseRounds registers channels, waits until the process "paused" runs
// some, then SIGSTOPs it for 2 TTL per round: after SIGCONT it must stop
// its stale channels at once (within 2 TTL), the cluster (the node ok and
// the process) converges, and the process runs channels again. Only the
// paused process's effects may be rejected as stale. what names the
// process in the timeline.
func pauseRounds(t *testing.T, r *report, l *ledger, p *proc, obs kv.KV, ok *member, tm timing, what string) {
	t.Helper()
	nodes := []*member{ok}
	registerChannels(t, obs, channelNames("s", scale(8, 32))...)
	eventually(t, 30*time.Second, "the process runs channels", func() bool { return l.openOf("paused") > 0 })
	awaitConvergence(t, r, obs, nodes, l, tm.ttl, 30*time.Second, time.Now())

	for round := range scale(1, 3) {
		held := l.openOf("paused")
		r.fault("round %d: %s SIGSTOPped for 2 TTL (%v) holding %d channels", round, what, 2*tm.ttl, held)
		l.setPaused("paused", true)
		p.signal(t, syscall.SIGSTOP)
		pace(testCtx(t), 2*tm.ttl)
		p.signal(t, syscall.SIGCONT)
		resumed := time.Now()
		r.note("SIGCONT")
		// The resumed process must notice at once that its session is
		// gone and stop every stale channel.
		eventually(t, 2*tm.ttl, "the resumed process stops its stale channels", func() bool { return l.openOf("paused") == 0 })
		r.note("stale channels stopped %v after SIGCONT", time.Since(resumed).Round(time.Millisecond))
		l.setPaused("paused", false)
		awaitConvergence(t, r, obs, nodes, l, tm.ttl, 30*time.Second, resumed)
		eventually(t, 30*time.Second, "the process runs channels again", func() bool { return l.openOf("paused") > 0 })
	}
	l.mu.Lock()
	r.figure("paused_overlaps", l.pausedOver)
	for node, n := range l.rejectedFrom {
		if node != "paused" {
			r.violate("%d effects of %s rejected: only the paused node may be stale", n, node)
		}
	}
	l.mu.Unlock()
	l.figures()
}

// TestNoDoubleOwnershipPartitionRaftkv is the partition test on a 3-node
// raftkv cluster: the node "cut" runs embedded in a follower whose inbound
// traffic (the leader's appends and heartbeats) is blackholed for 1.5x the
// lease TTL, or longer, until the leader has expired the node's lease,
// while the coordinator and the node "ok" run on the leader. The cut node
// must stop its channels before they are reassigned, and come back under a
// new ID.
func TestNoDoubleOwnershipPartitionRaftkv(t *testing.T) {
	r := newReport(t)
	l := newLedger(r)
	c := startRaft(t, 3, raftkv.WithLogger(r.logger("raftkv")))
	root := uniqueRoot(t)
	tm := fastTiming(time.Second)
	lead := c.leader()
	if lead < 0 { // startRaft waited for a leader: it just lost it
		t.Fatal("no raftkv leader")
	}
	follower := (lead + 1) % 3
	handle := func(i int) kv.Backend { return c.handle(t, i, root) }
	obs := handle(lead)
	coord := startCoord(t, "coord", handle(lead), func() {}, tm, channelmgr.WithLogger(r.logger("coord")))
	defer coord.stop()
	cut := startNode(t, l, "cut", handle(follower), func() {}, tm, nodewatch.WithLogger(r.logger("cut")))
	defer cut.stop()
	ok := startNode(t, l, "ok", handle(lead), func() {}, tm, nodewatch.WithLogger(r.logger("ok")))
	defer ok.stop()

	nodes := []*member{cut, ok}
	registerChannels(t, obs, channelNames("p", scale(8, 32))...)
	awaitConvergence(t, r, obs, nodes, l, tm.ttl, 30*time.Second, time.Now())

	for round := range scale(1, 5) {
		if c.leader() == follower {
			// Blackholing a leader's inbound cuts nothing it sends: this
			// round would test nothing.
			r.note("round %d skipped: raftkv follower %d now leads", round, follower)
			continue
		}
		oldID := cut.node.ID()
		r.fault("round %d: node cut (id %d) on raftkv follower %d, inbound blackholed for 1.5 TTL (%v) or until it is evicted", round, oldID, follower, 3*tm.ttl/2)
		c.proxies[follower].Blackhole()
		cutAt := time.Now()
		pace(testCtx(t), 3*tm.ttl/2)
		// The partition is one-way: until the follower's raft notices
		// that no heartbeat comes (and forgets the leader), it still
		// forwards the node's keep-alives, and the answers come back on
		// its own connections. So 1.5 TTL from the cut may not end the
		// node's lease (a slow machine saw 0.9s, under a 1s TTL, before
		// the follower began an election); hold the partition until the
		// leader has expired the lease and the registry key is gone.
		eventually(t, 20*tm.ttl, "node cut evicted during the partition", func() bool {
			ctx, cancel := context.WithTimeout(testCtx(t), tm.ttl)
			defer cancel()
			v, err := readView(ctx, obs)
			return err == nil && !v.live[oldID]
		})
		c.proxies[follower].Pass()
		healed := time.Now()
		r.note("healed after %v", healed.Sub(cutAt).Round(time.Millisecond))
		eventually(t, 30*time.Second, "node cut re-registered", func() bool { return cut.node.ID() > oldID })
		awaitConvergence(t, r, obs, nodes, l, tm.ttl, 30*time.Second, healed)
	}
	l.figures()
	if l.starts["ok"] == 0 {
		t.Fatal("no channel moved to the healthy node: the partition tested nothing")
	}
}

// TestNoDoubleOwnershipPauseRaftkv is the pause test on raftkv: the node
// process embeds a raftkv node of its own, joined to a 3-node cluster as a
// fourth voter (as a raftkv deployment runs every component inside a
// member), and is SIGSTOPped for 2x its TTL: the node and the raft member
// stop together. The cluster keeps its quorum (3 of 4); the coordinator and
// the other node run on the original members.
func TestNoDoubleOwnershipPauseRaftkv(t *testing.T) {
	r := newReport(t)
	l := newLedger(r)
	c := startRaft(t, 3)
	root := uniqueRoot(t)
	tm := fastTiming(time.Second)
	url := serveLedger(t, l)
	lead := c.leader()
	if lead < 0 {
		t.Fatal("no raftkv leader")
	}
	handle := func(i int) kv.Backend { return c.handle(t, i, root) }
	obs := handle(lead)
	coord := startCoord(t, "coord", handle(lead), func() {}, tm)
	defer coord.stop()
	ok := startNode(t, l, "ok", handle((lead+1)%3), func() {}, tm)
	defer ok.stop()

	addr := freePort(t)
	p := startProc(t, "paused", "--raft-id", "r3", "--raft-addr", addr, "--raft-dir", t.TempDir(), "--root", root,
		"--session-ttl", tm.ttl.String(), "--effects", url)
	var joinErr error
	if !poll(30*time.Second, func() bool {
		i := c.leader()
		if i < 0 {
			return false
		}
		ctx, cancel := context.WithTimeout(testCtx(t), 2*time.Second)
		defer cancel()
		joinErr = c.node(i).Join(ctx, "r3", addr)
		return joinErr == nil
	}) {
		t.Fatalf("joining the process's raft node: %v", joinErr)
	}

	pauseRounds(t, r, l, p, obs, ok, tm, "process (node and raft voter r3)")
}
