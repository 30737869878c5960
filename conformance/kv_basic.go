package conformance

import (
	"testing"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/stretchr/testify/require"
)

// RunKVBasic checks single-key reads and writes, List, values and key
// validation.
func RunKVBasic(t *testing.T, f Factory) {
	runScenarios(t, f, []scenario{
		{"PutGetDelete", basicPutGetDelete},
		{"GetMissing", basicGetMissing},
		{"ListSortedAtRevision", basicListSorted},
		{"NilAndEmptyValue", basicNilAndEmptyValue},
		{"InvalidKeys", basicInvalidKeys},
		{"EmptyPrefixListsRoot", basicEmptyPrefixListsRoot},
	})
}

func basicPutGetDelete(t *testing.T, s *sc) {
	const key = "basic/k"
	rev1 := put(t, s.ctx, s.b, key, "v1")
	item, rrev, err := s.b.Get(s.ctx, key)
	require.NoError(t, err)
	require.Equal(t, "v1", string(item.Value))
	require.Equal(t, key, item.Key)
	require.Equal(t, rev1, rrev, "Get is served at the revision of the last write")

	// An independent handle on the same store sees the write.
	other := s.env.Open(t)
	item, _, err = other.Get(s.ctx, key)
	require.NoError(t, err, "a second handle must see the first handle's write")
	require.Equal(t, "v1", string(item.Value))

	rev2 := put(t, s.ctx, s.b, key, "v2")
	require.Equal(t, rev1+1, rev2)
	require.Equal(t, "v2", string(get(t, s.ctx, other, key).Value))

	drev, deleted, err := kv.Delete(s.ctx, s.b, key)
	require.NoError(t, err)
	require.True(t, deleted, "deleting an existing key reports it")
	require.Equal(t, rev2+1, drev)
	_, mrev, err := other.Get(s.ctx, key)
	require.ErrorIs(t, err, kv.ErrKeyNotFound)
	require.Equal(t, drev, mrev)

	again, deleted, err := kv.Delete(s.ctx, s.b, key)
	require.NoError(t, err)
	require.False(t, deleted, "deleting a missing key removes nothing")
	require.Equal(t, drev, again, "deleting a missing key writes nothing")
}

func basicGetMissing(t *testing.T, s *sc) {
	put(t, s.ctx, s.b, "basic/present", "x")
	cur := currentRevision(t, s.ctx, s.b)
	item, rev, err := s.b.Get(s.ctx, "basic/absent")
	require.ErrorIs(t, err, kv.ErrKeyNotFound)
	require.Equal(t, kv.KeyValue{}, item, "a missing key returns the zero KeyValue")
	require.Equal(t, cur, rev, "Get of a missing key still returns the read revision")

	// The revision it returns follows writes.
	wrev := put(t, s.ctx, s.b, "basic/other", "y")
	_, rev, err = s.b.Get(s.ctx, "basic/absent")
	require.ErrorIs(t, err, kv.ErrKeyNotFound)
	require.Equal(t, wrev, rev)
	// A key that is a prefix of an existing key is still missing.
	_, _, err = s.b.Get(s.ctx, "basic/pres")
	require.ErrorIs(t, err, kv.ErrKeyNotFound)
}

func basicListSorted(t *testing.T, s *sc) {
	var last int64
	for _, k := range []string{"l/c", "l/a", "l/b/x", "l/b", "l/a/x", "m/z", "k"} {
		last = put(t, s.ctx, s.b, k, "v-"+k)
	}
	items, rev, err := s.b.List(s.ctx, "l/")
	require.NoError(t, err)
	require.Equal(t, last, rev, "List returns the revision it read at")
	require.Equal(t, []string{"l/a", "l/a/x", "l/b", "l/b/x", "l/c"}, keysOf(items), "List is sorted by key and bounded by the prefix")
	for _, it := range items {
		require.Equal(t, "v-"+it.Key, string(it.Value))
		requireSameKV(t, get(t, s.ctx, s.b, it.Key), it, "List and Get agree on %q", it.Key)
	}

	empty, rev, err := s.b.List(s.ctx, "nothing/")
	require.NoError(t, err)
	require.Empty(t, empty)
	require.Equal(t, last, rev, "an empty List still returns the read revision")
}

func basicNilAndEmptyValue(t *testing.T, s *sc) {
	resp := txn(t, s.ctx, s.b, kv.Txn{Then: []kv.Op{
		kv.OpPut("n/nil", nil),
		kv.OpPut("n/empty", []byte{}),
	}})
	for _, k := range []string{"n/nil", "n/empty"} {
		item, _, err := s.b.Get(s.ctx, k)
		require.NoError(t, err, "%q was stored with a zero-length value and exists", k)
		require.Empty(t, item.Value)
		require.Equal(t, int64(1), item.Version)
		require.Equal(t, resp.Revision, item.CreateRevision)
	}
	items, _, err := s.b.List(s.ctx, "n/")
	require.NoError(t, err)
	require.Equal(t, []string{"n/empty", "n/nil"}, keysOf(items))

	// nil and empty are the same value for compares.
	cmp := txn(t, s.ctx, s.b, kv.Txn{If: []kv.Cmp{
		kv.CmpValue("n/nil", kv.Equal, []byte{}),
		kv.CmpValue("n/empty", kv.Equal, nil),
		kv.CmpExists("n/nil"),
	}})
	require.True(t, cmp.Succeeded, "a nil value equals an empty one")
}

func basicInvalidKeys(t *testing.T, s *sc) {
	put(t, s.ctx, s.b, "ok", "v")
	before := currentRevision(t, s.ctx, s.b)
	for _, bad := range []string{"", "/", "/a"} {
		_, _, err := s.b.Get(s.ctx, bad)
		require.ErrorIs(t, err, kv.ErrInvalidKey, "Get(%q)", bad)

		for name, tx := range map[string]kv.Txn{
			"put":         {Then: []kv.Op{kv.OpPut("fine", []byte("x")), kv.OpPut(bad, []byte("x"))}},
			"delete":      {Then: []kv.Op{kv.OpPut("fine", []byte("x")), kv.OpDelete(bad)}},
			"get":         {Then: []kv.Op{kv.OpPut("fine", []byte("x")), kv.OpGet(bad)}},
			"else put":    {If: []kv.Cmp{kv.CmpMissing("ok")}, Else: []kv.Op{kv.OpPut("fine", []byte("x")), kv.OpPut(bad, nil)}},
			"compare":     {If: []kv.Cmp{kv.CmpExists(bad)}, Then: []kv.Op{kv.OpPut("fine", []byte("x"))}},
			"lease put":   {Then: []kv.Op{kv.OpPutLease(bad, nil, kv.NoLease)}},
			"value cmp":   {If: []kv.Cmp{kv.CmpValue(bad, kv.Equal, nil)}},
			"version cmp": {If: []kv.Cmp{kv.CmpVersion(bad, kv.Equal, 0)}},
		} {
			_, err := s.b.Txn(s.ctx, tx)
			require.ErrorIs(t, err, kv.ErrInvalidKey, "Txn with %s on %q", name, bad)
		}
	}
	for _, bad := range []string{"/", "/a"} {
		_, _, err := s.b.List(s.ctx, bad)
		require.ErrorIs(t, err, kv.ErrInvalidKey, "List(%q)", bad)

		w := startWatch(t, s.ctx, s.b, bad, 0)
		events, err := w.terminal()
		require.ErrorIs(t, err, kv.ErrInvalidKey, "Watch(%q) ends with ErrInvalidKey", bad)
		require.Empty(t, events)
	}
	requireMissing(t, s.ctx, s.b, "fine")
	require.Equal(t, before, currentRevision(t, s.ctx, s.b), "rejected txns write nothing")
}

func basicEmptyPrefixListsRoot(t *testing.T, s *sc) {
	for _, k := range []string{"t/u/v", "s", "r/a", "a b", "z~"} {
		put(t, s.ctx, s.b, k, k)
	}
	items, _, err := s.b.List(s.ctx, "")
	require.NoError(t, err)
	require.Equal(t, []string{"a b", "r/a", "s", "t/u/v", "z~"}, keysOf(items), "the empty prefix lists exactly the scenario's root")
}
