package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/chanwatch/chanwatch/audit"
	"github.com/chanwatch/chanwatch/channelmgr"
	"github.com/chanwatch/chanwatch/internal/etcdembed"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/etcdkv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/nodewatch"
)

func etcdBackend(t *testing.T, srv *etcdembed.Server, root string) kv.Backend {
	t.Helper()
	cli, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	b, err := etcdkv.New(cli, root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(); cli.Close() })
	return b
}

// TestCheckHealthyAndPlantedFaults runs `chanwatch check` against a live
// root on an embedded etcd (a coordinator and three nodes in-process, 24
// channels): it must exit 0 once the channels are Watched. Then, for each
// fault kind, the live root is copied to a root of its own, the fault is
// planted with direct etcdkv writes, and check must exit 1 naming it.
func TestCheckHealthyAndPlantedFaults(t *testing.T) {
	srv := etcdembed.NewForTest(t)
	ep := srv.Endpoints()[0]
	const root, channels = "check/live", 24
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })

	coord, err := channelmgr.New(etcdBackend(t, srv, root), channelmgr.WithSessionTTL(2*time.Second), channelmgr.WithNodeTTL(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); _ = coord.Run(ctx) }()
	rec := audit.NewRecorder(nil, 0)
	for i := range 3 {
		n, err := nodewatch.New(etcdBackend(t, srv, root), rec.Handler(fmt.Sprint("n", i), nil), nodewatch.WithSessionTTL(2*time.Second), nodewatch.WithLogger(zap.NewNop()))
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = n.Run(ctx) }()
	}
	b := etcdBackend(t, srv, root)
	for i := range channels {
		if err := channelmgr.Register(ctx, b, meta.ChannelSpec{Name: fmt.Sprintf("ch-%d", i), CollectionID: 1}); err != nil {
			t.Fatal(err)
		}
	}

	// Healthy: check exits 0 once every channel is placed (poll with a
	// deadline; each try is one real `check`).
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		code, out, errOut := runCLI(t, "check", "--endpoints", ep, "--root", root)
		if code == 0 {
			if !strings.Contains(out, "healthy") || !strings.Contains(out, fmt.Sprintf("%d channels registered, %d assigned, 3 live nodes", channels, channels)) {
				t.Fatalf("healthy check output: %q", out)
			}
			break
		}
		if code != 1 || time.Now().After(deadline) {
			t.Fatalf("check on the live root: exit %d\n%s%s", code, out, errOut)
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
	}
	items, _, err := b.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	var onNode1 string // a channel of the node with the smallest ID
	for _, it := range items {
		if id, ch, err := meta.ParseChannelKey(it.Key); err == nil && id != 0 && (onNode1 == "" || id < mustOwner(t, items, onNode1)) {
			onNode1 = ch
		}
	}
	owner := mustOwner(t, items, onNode1)

	del := func(key string) func(t *testing.T, b kv.Backend) {
		return func(t *testing.T, b kv.Backend) {
			if _, _, err := kv.Delete(ctx, b, key); err != nil {
				t.Fatal(err)
			}
		}
	}
	putRaw := func(key, value string) func(t *testing.T, b kv.Backend) {
		return func(t *testing.T, b kv.Backend) {
			if _, err := kv.Put(ctx, b, key, []byte(value)); err != nil {
				t.Fatal(err)
			}
		}
	}
	infoOn := func() string {
		v, err := meta.EncodeChannelInfo(meta.ChannelInfo{Name: onNode1, CollectionID: 1, State: meta.ToWatch, AssignRevision: 1})
		if err != nil {
			t.Fatal(err)
		}
		return string(v)
	}
	coordNoLease, _ := meta.EncodeCoordSession(meta.CoordSession{ID: "rogue"})
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, b kv.Backend)
		kind  audit.Kind
	}{
		{"two keys", putRaw(meta.ChannelKey(owner+100, onNode1), infoOn()), audit.TwoKeys},
		{"unassigned", del(meta.ChannelKey(owner, onNode1)), audit.Unassigned},
		{"gone owner", del(meta.NodeSessionKey(owner)), audit.GoneOwner},
		{"corrupt value", putRaw(meta.ChannelKey(owner, onNode1), "{not json"), audit.Corrupt},
		{"unregistered", del(meta.RegistryKey(onNode1)), audit.Unregistered},
		{"leader missing", del(meta.CoordinatorKey), audit.BadLeader},
		{"leader corrupt", putRaw(meta.CoordinatorKey, "garbage"), audit.BadLeader},
		{"leader on no lease", putRaw(meta.CoordinatorKey, string(coordNoLease)), audit.BadLeader},
	} {
		t.Run(tc.name, func(t *testing.T) {
			froot := "check/fault/" + strings.ReplaceAll(tc.name, " ", "-")
			fb := etcdBackend(t, srv, froot)
			copyRoot(t, fb, items)
			if code, out, errOut := runCLI(t, "check", "--endpoints", ep, "--root", froot); code != 0 {
				t.Fatalf("copy of the healthy root: exit %d\n%s%s", code, out, errOut)
			}
			tc.plant(t, fb)
			code, out, errOut := runCLI(t, "check", "--endpoints", ep, "--root", froot, "-o", "json")
			if code != 1 {
				t.Fatalf("exit %d, want 1\n%s%s", code, out, errOut)
			}
			if !strings.Contains(out, fmt.Sprintf(`"kind": %q`, tc.kind)) || !strings.Contains(errOut, "invariants broken") {
				t.Fatalf("output does not name %s:\n%s%s", tc.kind, out, errOut)
			}
			code, out, _ = runCLI(t, "check", "--endpoints", ep, "--root", froot)
			if code != 1 || !strings.Contains(out, string(tc.kind)) {
				t.Fatalf("table: exit %d, want 1 naming %s:\n%s", code, tc.kind, out)
			}
		})
	}
}

func mustOwner(t *testing.T, items []kv.KeyValue, ch string) int64 {
	t.Helper()
	for _, it := range items {
		if id, c, err := meta.ParseChannelKey(it.Key); err == nil && c == ch {
			return id
		}
	}
	t.Fatalf("channel %s has no key", ch)
	return 0
}

// copyRoot writes items into b, keys that had a lease on one long lease of
// b's own (so they outlive the test's checks).
func copyRoot(t *testing.T, b kv.Backend, items []kv.KeyValue) {
	t.Helper()
	ctx := t.Context()
	lease, err := b.Grant(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var ops []kv.Op
	flush := func() {
		if len(ops) == 0 {
			return
		}
		if _, err := b.Txn(ctx, kv.Txn{Then: ops}); err != nil {
			t.Fatal(err)
		}
		ops = nil
	}
	for _, it := range items {
		l := kv.NoLease
		if it.Lease != kv.NoLease {
			l = lease
		}
		ops = append(ops, kv.OpPutLease(it.Key, it.Value, l))
		if len(ops) == 64 {
			flush()
		}
	}
	flush()
}
