package raftkv

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
)

// TestOpenValidates: Open rejects bad configs and options with
// ErrInvalidConfig before it creates anything.
func TestOpenValidates(t *testing.T) {
	dir := t.TempDir()
	good := Config{ID: "a", Addr: "127.0.0.1:0", Dir: filepath.Join(dir, "a")}
	for name, tc := range map[string]struct {
		cfg  Config
		opts []Option
	}{
		"no ID":                {cfg: Config{Addr: good.Addr, Dir: good.Dir}},
		"no Addr":              {cfg: Config{ID: "a", Dir: good.Dir}},
		"bad Addr":             {cfg: Config{ID: "a", Addr: "nowhere", Dir: good.Dir}},
		"no Dir":               {cfg: Config{ID: "a", Addr: good.Addr}},
		"peers without self":   {cfg: Config{ID: "a", Addr: good.Addr, Dir: good.Dir, Bootstrap: true, Peers: []Peer{{"b", "127.0.0.1:1"}}}},
		"peers not bootstrap":  {cfg: Config{ID: "a", Addr: good.Addr, Dir: good.Dir, Peers: []Peer{{"a", "127.0.0.1:1"}}}},
		"duplicate peer":       {cfg: Config{ID: "a", Addr: good.Addr, Dir: good.Dir, Bootstrap: true, Peers: []Peer{{"a", "127.0.0.1:1"}, {"a", "127.0.0.1:2"}}}},
		"unspecified advert":   {cfg: Config{ID: "a", Addr: good.Addr, Dir: good.Dir, Advertise: "0.0.0.0:7000"}},
		"zero max txn ops":     {cfg: good, opts: []Option{WithMaxTxnOps(0)}},
		"nil logger":           {cfg: good, opts: []Option{WithLogger(nil)}},
		"nil clock":            {cfg: good, opts: []Option{WithClock(nil)}},
		"lease over heartbeat": {cfg: good, opts: []Option{WithRaftTimeouts(100*time.Millisecond, 100*time.Millisecond, time.Second)}},
		"no request timeout":   {cfg: good, opts: []Option{WithRequestTimeout(0)}},
	} {
		n, err := Open(tc.cfg, tc.opts...)
		if n != nil {
			_ = n.Close()
		}
		errIs(t, err, ErrInvalidConfig, name)
	}
	_, err := os.Stat(good.Dir)
	errIs(t, err, os.ErrNotExist, "a rejected config creates nothing")
	n, err := Open(good)
	noErr(t, err)
	noErr(t, n.Close())
}

// TestBootstrapPeersAndJoin: three nodes bootstrapped with the same static
// membership elect a leader; a fourth, started empty, is joined through a
// follower (forwarded to the leader), catches up, and is removed again.
func TestBootstrapPeersAndJoin(t *testing.T) {
	dir := t.TempDir()
	ctx := testContext(t)
	var peers []Peer
	var lns []net.Listener
	for i := range 3 {
		// Reserve free ports, then free them for the nodes.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		noErr(t, err)
		lns = append(lns, ln)
		peers = append(peers, Peer{ID: fmt.Sprintf("p%d", i), Addr: ln.Addr().String()})
	}
	for _, ln := range lns {
		noErr(t, ln.Close())
	}
	opts := []Option{loopbackTimeouts, WithLogger(testLogger(t))}
	var nodes []*Node
	for _, p := range peers {
		n, err := Open(Config{ID: p.ID, Addr: p.Addr, Dir: filepath.Join(dir, p.ID), Bootstrap: true, Peers: peers}, opts...)
		noErr(t, err)
		t.Cleanup(func() { noErr(t, n.Close()) })
		nodes = append(nodes, n)
	}
	id, err := nodes[0].WaitLeader(ctx)
	noErr(t, err)
	var f *Node
	for _, n := range nodes {
		if n.ID() != id {
			f = n
		}
	}
	rev, err := kv.Put(ctx, f, "j/k", []byte("v"))
	noErr(t, err)

	joiner, err := Open(Config{ID: "p3", Addr: "127.0.0.1:0", Dir: filepath.Join(dir, "p3")}, opts...)
	noErr(t, err)
	t.Cleanup(func() { noErr(t, joiner.Close()) })
	noErr(t, f.Join(ctx, joiner.ID(), joiner.Addr()))
	item, _, err := joiner.Get(ctx, "j/k")
	noErr(t, err)
	equal(t, item.ModRevision, rev)
	_, err = kv.Put(ctx, joiner, "j/k2", nil)
	noErr(t, err)

	noErr(t, f.Remove(ctx, joiner.ID()))
	_, err = kv.Put(ctx, f, "j/k3", nil)
	noErr(t, err, "the cluster goes on without the removed node")
	errIs(t, f.Join(ctx, "", "x"), ErrInvalidConfig)
	if err := f.Remove(ctx, ""); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("Remove(\"\"): %v", err)
	}
}
