package audit

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/memkv"
	"github.com/chanwatch/chanwatch/meta"
)

func put(t testing.TB, b kv.KV, key string, value []byte, lease kv.LeaseID) {
	t.Helper()
	if _, err := b.Txn(context.Background(), kv.Txn{Then: []kv.Op{kv.OpPutLease(key, value, lease)}}); err != nil {
		t.Fatal(err)
	}
}

// must panics on an encoding error (the values here are all valid).
func must(v []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return v
}

// healthyRoot writes a coordinator on a lease, nodes 1..nodes on leases,
// and n channels registered and Watched round-robin on them.
func healthyRoot(t testing.TB, b kv.Backend, n, nodes int) {
	ctx := context.Background()
	l, err := b.Grant(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	put(t, b, meta.CoordinatorKey, must(meta.EncodeCoordSession(meta.CoordSession{ID: "c1"})), l)
	for id := int64(1); id <= int64(nodes); id++ {
		put(t, b, meta.NodeSessionKey(id), must(meta.EncodeNodeSession(meta.NodeSession{ID: id, State: meta.NodeServing, TTL: 10 * time.Second})), l)
	}
	const batch = 64
	var ops []kv.Op
	for i := 0; i < n; i++ {
		ch := fmt.Sprintf("by-dev-rootcoord-dml_%d_%dv0", i%16, i)
		ops = append(ops,
			kv.OpPut(meta.RegistryKey(ch), must(meta.EncodeChannelSpec(meta.ChannelSpec{Name: ch, CollectionID: int64(i % 100)}))),
			kv.OpPut(meta.ChannelKey(int64(1+i%nodes), ch), must(meta.EncodeChannelInfo(meta.ChannelInfo{Name: ch, CollectionID: int64(i % 100), State: meta.Watched, AssignRevision: int64(i + 1)}))))
		if len(ops) >= batch || i == n-1 {
			if _, err := b.Txn(ctx, kv.Txn{Then: ops}); err != nil {
				t.Fatal(err)
			}
			ops = nil
		}
	}
}

func snap(t testing.TB, b kv.KV) Report {
	t.Helper()
	items, rev, err := b.List(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	return Snapshot(items, rev)
}

func requireKind(t *testing.T, r Report, k Kind, ch string) {
	t.Helper()
	for _, p := range r.Problems {
		if p.Kind == k && (ch == "" || p.Channel == ch) {
			return
		}
	}
	t.Fatalf("no %s problem for %q in %v", k, ch, r.Problems)
}

func TestSnapshotHealthy(t *testing.T) {
	m := memkv.New()
	defer m.Close()
	healthyRoot(t, m.NewClient(), 40, 3)
	r := snap(t, m.NewClient())
	if !r.Healthy() || r.Registered != 40 || r.Assigned != 40 || r.LiveNodes != 3 || r.Leader != "c1" || r.NodeTTL != 10*time.Second {
		t.Fatalf("healthy root reported as %+v", r)
	}
}

// TestSnapshotFindsEachFault plants each fault on a healthy root and
// requires Snapshot to name it, and nothing to be reported beyond it.
func TestSnapshotFindsEachFault(t *testing.T) {
	const ch = "by-dev-rootcoord-dml_0_0v0" // on node 1
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, b kv.Backend)
		kind  Kind
		ch    string
	}{
		{"two keys", func(t *testing.T, b kv.Backend) {
			put(t, b, meta.ChannelKey(2, ch), must(meta.EncodeChannelInfo(meta.ChannelInfo{Name: ch, State: meta.ToWatch, AssignRevision: 99})), 0)
		}, TwoKeys, ch},
		{"unassigned", func(t *testing.T, b kv.Backend) {
			if _, _, err := kv.Delete(context.Background(), b, meta.ChannelKey(1, ch)); err != nil {
				t.Fatal(err)
			}
		}, Unassigned, ch},
		{"gone owner", func(t *testing.T, b kv.Backend) {
			if _, _, err := kv.Delete(context.Background(), b, meta.NodeSessionKey(1)); err != nil {
				t.Fatal(err)
			}
		}, GoneOwner, ch},
		{"corrupt assignment", func(t *testing.T, b kv.Backend) { put(t, b, meta.ChannelKey(1, ch), []byte("{oops"), 0) }, Corrupt, ch},
		{"corrupt registry", func(t *testing.T, b kv.Backend) { put(t, b, meta.RegistryKey(ch), []byte(`{"v":99}`), 0) }, Corrupt, ch},
		{"unregistered", func(t *testing.T, b kv.Backend) {
			if _, _, err := kv.Delete(context.Background(), b, meta.RegistryKey(ch)); err != nil {
				t.Fatal(err)
			}
		}, Unregistered, ch},
		{"prepare on the owner", func(t *testing.T, b kv.Backend) {
			put(t, b, meta.PrepareKey(1, ch), must(meta.EncodePrepareInfo(meta.ChannelInfo{Name: ch, State: meta.ToPrepare})), 0)
		}, BadPrepare, ch},
		{"two prepare keys", func(t *testing.T, b kv.Backend) {
			put(t, b, meta.PrepareKey(2, ch), must(meta.EncodePrepareInfo(meta.ChannelInfo{Name: ch, State: meta.ToPrepare})), 0)
			put(t, b, meta.PrepareKey(3, ch), must(meta.EncodePrepareInfo(meta.ChannelInfo{Name: ch, State: meta.Prepared})), 0)
		}, BadPrepare, ch},
		{"corrupt prepare", func(t *testing.T, b kv.Backend) { put(t, b, meta.PrepareKey(2, ch), []byte("{oops"), 0) }, Corrupt, ch},
		{"leader missing", func(t *testing.T, b kv.Backend) {
			if _, _, err := kv.Delete(context.Background(), b, meta.CoordinatorKey); err != nil {
				t.Fatal(err)
			}
		}, BadLeader, ""},
		{"leader corrupt", func(t *testing.T, b kv.Backend) { put(t, b, meta.CoordinatorKey, []byte("garbage"), 0) }, BadLeader, ""},
		{"leader on no lease", func(t *testing.T, b kv.Backend) {
			put(t, b, meta.CoordinatorKey, must(meta.EncodeCoordSession(meta.CoordSession{ID: "c1"})), 0)
		}, BadLeader, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := memkv.New()
			defer m.Close()
			b := m.NewClient()
			healthyRoot(t, b, 8, 2)
			tc.plant(t, b)
			r := snap(t, b)
			requireKind(t, r, tc.kind, tc.ch)
			for _, p := range r.Problems {
				// Node 1's other channels are on a gone owner too.
				if p.Kind != tc.kind {
					t.Errorf("unexpected problem beside %s: %v", tc.kind, p)
				}
			}
		})
	}
}

func TestFollowerGrace(t *testing.T) {
	m := memkv.New()
	defer m.Close()
	b := m.NewClient()
	healthyRoot(t, b, 4, 2)
	put(t, b, meta.ChannelKey(1, "x"), []byte("bad"), 0) // corrupt and unregistered
	items, rev, err := b.List(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	f := &Follower{Grace: time.Minute}
	t0 := time.Unix(1000, 0)
	r := f.Next(items, rev, t0)
	if len(r.Problems) != 1 || r.Problems[0].Kind != Corrupt {
		t.Fatalf("first pass: want only the corrupt value at once, got %v", r.Problems)
	}
	r = f.Next(items, rev, t0.Add(2*time.Minute))
	requireKind(t, r, Unregistered, "x")
	requireKind(t, r, Corrupt, "x")
}

// TestSnapshotCost100k times one check pass (List + Snapshot) over a root
// of 100,000 registered and assigned channels (200,000 keys) on memkv: the
// figure in docs/BENCHMARKS.md. It fails if a pass takes a minute (the
// interval it must fit in), which leaves room for -race on a loaded box.
func TestSnapshotCost100k(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a 200,000-key root")
	}
	m := memkv.New()
	defer m.Close()
	b := m.NewClient()
	healthyRoot(t, b, 100_000, 50)
	start := time.Now()
	items, rev, err := b.List(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	listed := time.Since(start)
	r := Snapshot(items, rev)
	took := time.Since(start)
	if !r.Healthy() || r.Registered != 100_000 {
		t.Fatalf("unexpected report: %d problems, %d registered", len(r.Problems), r.Registered)
	}
	t.Logf("FIGURE check pass over %d keys (100,000 channels, 50 nodes) on memkv: %v (List %v, Snapshot %v)", len(items), took, listed, took-listed)
	if took > time.Minute {
		t.Fatalf("one pass took %v", took)
	}
}

func BenchmarkSnapshot100k(b *testing.B) {
	m := memkv.New()
	defer m.Close()
	c := m.NewClient()
	healthyRoot(b, c, 100_000, 50)
	items, rev, err := c.List(context.Background(), "")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if r := Snapshot(items, rev); !r.Healthy() {
			b.Fatal(r.Problems[0])
		}
	}
}
