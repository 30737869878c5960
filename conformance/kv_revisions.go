package conformance

import (
	"testing"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/stretchr/testify/require"
)

// RunKVRevisions checks the global revision and per-key revisions and
// versions, and compaction.
func RunKVRevisions(t *testing.T, f Factory) {
	runScenarios(t, f, []scenario{
		{"OnePerWriteTxn", revOnePerWriteTxn},
		{"NoBumpWithoutWrites", revNoBumpWithoutWrites},
		{"KeyMetadata", revKeyMetadata},
		{"DeleteRecreateResets", revDeleteRecreate},
		{"WatchMatchesGet", revWatchMatchesGet},
		{"Compact", revCompact},
	})
}

func revOnePerWriteTxn(t *testing.T, s *sc) {
	r0 := currentRevision(t, s.ctx, s.b)
	resp := txn(t, s.ctx, s.b, kv.Txn{Then: []kv.Op{
		kv.OpPut("rv/a", []byte("1")),
		kv.OpPut("rv/b", []byte("1")),
		kv.OpPut("rv/c", []byte("1")),
	}})
	require.Equal(t, r0+1, resp.Revision, "a txn of three puts advances the revision by one")
	for _, k := range []string{"rv/a", "rv/b", "rv/c"} {
		item := get(t, s.ctx, s.b, k)
		require.Equal(t, r0+1, item.ModRevision, "%q carries the txn's revision", k)
		require.Equal(t, r0+1, item.CreateRevision, "%q", k)
	}

	resp = txn(t, s.ctx, s.b, kv.Txn{Then: []kv.Op{
		kv.OpPut("rv/a", []byte("2")),
		kv.OpDelete("rv/b"),
		kv.OpGet("rv/c"),
	}})
	require.Equal(t, r0+2, resp.Revision, "a put and a delete share one revision")
	require.Equal(t, r0+2, get(t, s.ctx, s.b, "rv/a").ModRevision)

	for i := range int64(5) {
		rev := put(t, s.ctx, s.b, "rv/seq", "x")
		require.Equal(t, r0+3+i, rev, "sequential single puts advance by one each")
	}
	require.Equal(t, r0+7, currentRevision(t, s.ctx, s.b))
}

func revNoBumpWithoutWrites(t *testing.T, s *sc) {
	put(t, s.ctx, s.b, "nb/k", "v")
	r0 := currentRevision(t, s.ctx, s.b)

	steps := []struct {
		name string
		tx   kv.Txn
	}{
		{"read-only txn", kv.Txn{Then: []kv.Op{kv.OpGet("nb/k"), kv.OpGet("nb/missing")}}},
		{"empty txn", kv.Txn{}},
		{"failed compare, empty Else", kv.Txn{If: []kv.Cmp{kv.CmpMissing("nb/k")}, Then: []kv.Op{kv.OpPut("nb/x", nil)}}},
		{"failed compare, read-only Else", kv.Txn{If: []kv.Cmp{kv.CmpMissing("nb/k")}, Then: []kv.Op{kv.OpPut("nb/x", nil)}, Else: []kv.Op{kv.OpGet("nb/k")}}},
		{"delete of a missing key", kv.Txn{Then: []kv.Op{kv.OpDelete("nb/missing")}}},
	}
	for _, st := range steps {
		resp := txn(t, s.ctx, s.b, st.tx)
		require.Equal(t, r0, resp.Revision, "%s reports the read revision", st.name)
		require.Equal(t, r0, currentRevision(t, s.ctx, s.b), "%s must not advance the revision", st.name)
	}
	_, rev, err := s.b.Get(s.ctx, "nb/k")
	require.NoError(t, err)
	require.Equal(t, r0, rev)

	require.Equal(t, r0+1, put(t, s.ctx, s.b, "nb/k", "w"), "the next write is the next revision")
}

func revKeyMetadata(t *testing.T, s *sc) {
	const key = "meta/k"
	r1 := put(t, s.ctx, s.b, key, "a")
	requireSameKV(t, kv.KeyValue{Key: key, Value: []byte("a"), CreateRevision: r1, ModRevision: r1, Version: 1}, get(t, s.ctx, s.b, key))

	put(t, s.ctx, s.b, "meta/other", "x") // moves the global revision only
	r2 := put(t, s.ctx, s.b, key, "b")
	require.Equal(t, r1+2, r2)
	requireSameKV(t, kv.KeyValue{Key: key, Value: []byte("b"), CreateRevision: r1, ModRevision: r2, Version: 2}, get(t, s.ctx, s.b, key))

	r3 := put(t, s.ctx, s.b, key, "b") // same value: still a write
	requireSameKV(t, kv.KeyValue{Key: key, Value: []byte("b"), CreateRevision: r1, ModRevision: r3, Version: 3}, get(t, s.ctx, s.b, key))

	other := get(t, s.ctx, s.b, "meta/other")
	require.Equal(t, int64(1), other.Version, "writes to one key leave another's version alone")
}

func revDeleteRecreate(t *testing.T, s *sc) {
	const key = "dr/k"
	r1 := put(t, s.ctx, s.b, key, "a")
	put(t, s.ctx, s.b, key, "b")
	drev, deleted, err := kv.Delete(s.ctx, s.b, key)
	require.NoError(t, err)
	require.True(t, deleted)

	resp := txn(t, s.ctx, s.b, kv.Txn{If: []kv.Cmp{kv.CmpMissing(key)}, Then: []kv.Op{kv.OpPut(key, []byte("c"))}})
	require.True(t, resp.Succeeded, "a deleted key is missing again")
	require.Equal(t, drev+1, resp.Revision)
	item := get(t, s.ctx, s.b, key)
	requireSameKV(t, kv.KeyValue{Key: key, Value: []byte("c"), CreateRevision: drev + 1, ModRevision: drev + 1, Version: 1}, item,
		"a re-created key starts over: version 1, new create revision")
	require.NotEqual(t, r1, item.CreateRevision)

	// A compare against the old incarnation's create revision fails.
	stale := txn(t, s.ctx, s.b, kv.Txn{If: []kv.Cmp{kv.CmpCreateRevision(key, kv.Equal, r1)}})
	require.False(t, stale.Succeeded)
}

func revWatchMatchesGet(t *testing.T, s *sc) {
	r0 := currentRevision(t, s.ctx, s.b)
	w := startWatch(t, s.ctx, s.b, "wm/", r0+1)

	var snaps []kv.KeyValue // state after each put, as Get sees it
	put(t, s.ctx, s.b, "wm/a", "1")
	snaps = append(snaps, get(t, s.ctx, s.b, "wm/a"))
	put(t, s.ctx, s.b, "wm/a", "2")
	snaps = append(snaps, get(t, s.ctx, s.b, "wm/a"))
	resp := txn(t, s.ctx, s.b, kv.Txn{Then: []kv.Op{kv.OpPut("wm/b", []byte("3")), kv.OpPut("wm/c", nil)}})
	require.Equal(t, r0+3, resp.Revision)
	items, _, err := s.b.List(s.ctx, "wm/")
	require.NoError(t, err)
	require.Len(t, items, 3)
	snaps = append(snaps, items[1], items[2])
	drev, _, err := kv.Delete(s.ctx, s.b, "wm/a")
	require.NoError(t, err)

	events := w.next(5)
	for i, snap := range snaps {
		require.Equal(t, kv.EventPut, events[i].Type, "event %d", i)
		requireSameKV(t, snap, events[i].KV, "event %d carries the key as Get/List saw it", i)
	}
	del := events[4]
	require.Equal(t, kv.EventDelete, del.Type)
	require.Equal(t, "wm/a", del.KV.Key)
	require.Equal(t, drev, del.Revision(), "a DELETE's ModRevision is the revision of the delete")
	require.Empty(t, del.KV.Value, "a DELETE carries only the key and the revision")
	require.Zero(t, del.KV.CreateRevision, "a DELETE carries only the key and the revision")
	require.Zero(t, del.KV.Version, "a DELETE carries only the key and the revision")
	require.Zero(t, del.KV.Lease, "a DELETE carries only the key and the revision")
	w.requireNoMore(s.ctx, s.b, "wm/")
}

func revCompact(t *testing.T, s *sc) {
	put(t, s.ctx, s.b, "cp/k", "1")
	r2 := put(t, s.ctx, s.b, "cp/k", "2")
	r3 := put(t, s.ctx, s.b, "cp/k", "3")

	err := s.b.Compact(s.ctx, r3+100)
	require.ErrorIs(t, err, kv.ErrFutureRev, "compacting past the current revision")

	require.NoError(t, s.b.Compact(s.ctx, r2))
	err = s.b.Compact(s.ctx, r2)
	require.ErrorIs(t, err, kv.ErrCompacted, "compacting at the compact revision again")
	require.Equal(t, r2, kv.CompactRevision(err), "the error carries the compact revision")
	err = s.b.Compact(s.ctx, r2-1)
	require.ErrorIs(t, err, kv.ErrCompacted, "compacting below the compact revision")

	// Compaction drops history, not current state.
	item := get(t, s.ctx, s.b, "cp/k")
	require.Equal(t, "3", string(item.Value))
	require.Equal(t, r3, item.ModRevision)
	require.Equal(t, int64(3), item.Version)
	require.NoError(t, s.b.Compact(s.ctx, r3), "compacting forward again")
	require.Equal(t, r3+1, put(t, s.ctx, s.b, "cp/k", "4"), "compaction does not move the revision")
}
