package conformance

import (
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/stretchr/testify/require"
)

// RunKVTxn checks If/Then/Else transactions: compares, branches, per-op
// responses and the requests a backend must reject whole.
func RunKVTxn(t *testing.T, f Factory) {
	runScenarios(t, f, []scenario{
		{"CreateOnly", txnCreateOnly},
		{"CompareAndSwap", txnCompareAndSwap},
		{"Compares", txnCompares},
		{"FailedRunsElse", txnFailedRunsElse},
		{"GetInsideTxn", txnGetInside},
		{"DeleteReportsDeleted", txnDeleteReportsDeleted},
		{"SameKeyTwiceInBranch", txnSameKeyTwice},
		{"UnknownLease", txnUnknownLease},
	})
}

// opKV returns the KV of the i-th response of resp, which must be a Get
// that found its key.
func opKV(t testing.TB, resp kv.TxnResponse, i int) kv.KeyValue {
	t.Helper()
	require.Greater(t, len(resp.Responses), i, "the txn has a response for op %d", i)
	require.NotNil(t, resp.Responses[i].KV, "op %d is a Get that found its key", i)
	return *resp.Responses[i].KV
}

func txnCreateOnly(t *testing.T, s *sc) {
	const key = "txn/leader"
	create := func(v string) kv.TxnResponse {
		return txn(t, s.ctx, s.b, kv.Txn{
			If:   []kv.Cmp{kv.CmpCreateRevision(key, kv.Equal, 0)},
			Then: []kv.Op{kv.OpPut(key, []byte(v))},
			Else: []kv.Op{kv.OpGet(key)},
		})
	}
	first := create("first")
	require.True(t, first.Succeeded, "creating a missing key succeeds")
	require.Len(t, first.Responses, 1)
	require.Nil(t, first.Responses[0].KV, "a put's response carries no KV")

	second := create("second")
	require.False(t, second.Succeeded, "a second create must fail")
	require.Equal(t, first.Revision, second.Revision, "a failed create with a read-only Else writes nothing")
	require.Len(t, second.Responses, 1)
	require.NotNil(t, second.Responses[0].KV, "the Else Get finds the key")
	require.Equal(t, "first", string(second.Responses[0].KV.Value))
	require.Equal(t, first.Revision, second.Responses[0].KV.CreateRevision)

	item := get(t, s.ctx, s.b, key)
	require.Equal(t, "first", string(item.Value))
	require.Equal(t, int64(1), item.Version)
}

func txnCompareAndSwap(t *testing.T, s *sc) {
	const key = "txn/cas"
	rev := put(t, s.ctx, s.b, key, "v1")
	swap := func(expectMod int64, v string) kv.TxnResponse {
		return txn(t, s.ctx, s.b, kv.Txn{
			If:   []kv.Cmp{kv.CmpModRevision(key, kv.Equal, expectMod)},
			Then: []kv.Op{kv.OpPut(key, []byte(v))},
			Else: []kv.Op{kv.OpGet(key)},
		})
	}
	ok := swap(rev, "v2")
	require.True(t, ok.Succeeded, "CAS on the current mod revision succeeds")
	require.Equal(t, rev+1, ok.Revision)

	stale := swap(rev, "v3")
	require.False(t, stale.Succeeded, "CAS on a stale mod revision fails")
	cur := opKV(t, stale, 0)
	require.Equal(t, "v2", string(cur.Value))
	require.Equal(t, ok.Revision, cur.ModRevision)

	again := swap(cur.ModRevision, "v3")
	require.True(t, again.Succeeded, "CAS on the revision read in Else succeeds")
	require.Equal(t, "v3", string(get(t, s.ctx, s.b, key).Value))

	// The same guard on the version.
	byVersion := txn(t, s.ctx, s.b, kv.Txn{
		If:   []kv.Cmp{kv.CmpVersion(key, kv.Equal, 3)},
		Then: []kv.Op{kv.OpPut(key, []byte("v4"))},
	})
	require.True(t, byVersion.Succeeded, "version 3 after three writes")
	require.Equal(t, "v4", string(get(t, s.ctx, s.b, key).Value))
}

func txnCompares(t *testing.T, s *sc) {
	const key, missing = "cmp/k", "cmp/missing"
	put(t, s.ctx, s.b, key, "m")
	put(t, s.ctx, s.b, key, "m") // version 2
	item := get(t, s.ctx, s.b, key)
	require.Equal(t, int64(2), item.Version)
	before := currentRevision(t, s.ctx, s.b)

	cases := []struct {
		name string
		cmps []kv.Cmp
		want bool
	}{
		{"value =", []kv.Cmp{kv.CmpValue(key, kv.Equal, []byte("m"))}, true},
		{"value = other", []kv.Cmp{kv.CmpValue(key, kv.Equal, []byte("n"))}, false},
		{"value !=", []kv.Cmp{kv.CmpValue(key, kv.NotEqual, []byte("m"))}, false},
		{"value != other", []kv.Cmp{kv.CmpValue(key, kv.NotEqual, []byte("x"))}, true},
		{"value < n", []kv.Cmp{kv.CmpValue(key, kv.Less, []byte("n"))}, true},
		{"value < a", []kv.Cmp{kv.CmpValue(key, kv.Less, []byte("a"))}, false},
		{"value > a", []kv.Cmp{kv.CmpValue(key, kv.Greater, []byte("a"))}, true},
		{"value > mm", []kv.Cmp{kv.CmpValue(key, kv.Greater, []byte("mm"))}, false},
		{"version = 2", []kv.Cmp{kv.CmpVersion(key, kv.Equal, 2)}, true},
		{"version = 1", []kv.Cmp{kv.CmpVersion(key, kv.Equal, 1)}, false},
		{"version != 2", []kv.Cmp{kv.CmpVersion(key, kv.NotEqual, 2)}, false},
		{"version < 3", []kv.Cmp{kv.CmpVersion(key, kv.Less, 3)}, true},
		{"version > 2", []kv.Cmp{kv.CmpVersion(key, kv.Greater, 2)}, false},
		{"create =", []kv.Cmp{kv.CmpCreateRevision(key, kv.Equal, item.CreateRevision)}, true},
		{"create < mod", []kv.Cmp{kv.CmpCreateRevision(key, kv.Less, item.ModRevision)}, true},
		{"mod =", []kv.Cmp{kv.CmpModRevision(key, kv.Equal, item.ModRevision)}, true},
		{"mod > create", []kv.Cmp{kv.CmpModRevision(key, kv.Greater, item.CreateRevision)}, true},
		{"mod = create", []kv.Cmp{kv.CmpModRevision(key, kv.Equal, item.CreateRevision)}, false},
		{"exists", []kv.Cmp{kv.CmpExists(key)}, true},
		{"missing", []kv.Cmp{kv.CmpMissing(key)}, false},

		// A missing key: value compares are always false, the numbers are 0.
		{"missing value = nil", []kv.Cmp{kv.CmpValue(missing, kv.Equal, nil)}, false},
		{"missing value = empty", []kv.Cmp{kv.CmpValue(missing, kv.Equal, []byte{})}, false},
		{"missing value != x", []kv.Cmp{kv.CmpValue(missing, kv.NotEqual, []byte("x"))}, false},
		{"missing value < z", []kv.Cmp{kv.CmpValue(missing, kv.Less, []byte("z"))}, false},
		{"missing value > empty", []kv.Cmp{kv.CmpValue(missing, kv.Greater, nil)}, false},
		{"missing version = 0", []kv.Cmp{kv.CmpVersion(missing, kv.Equal, 0)}, true},
		{"missing version > 0", []kv.Cmp{kv.CmpVersion(missing, kv.Greater, 0)}, false},
		{"missing create = 0", []kv.Cmp{kv.CmpCreateRevision(missing, kv.Equal, 0)}, true},
		{"missing mod = 0", []kv.Cmp{kv.CmpModRevision(missing, kv.Equal, 0)}, true},
		{"missing mod < 1", []kv.Cmp{kv.CmpModRevision(missing, kv.Less, 1)}, true},
		{"missing exists", []kv.Cmp{kv.CmpExists(missing)}, false},
		{"missing missing", []kv.Cmp{kv.CmpMissing(missing)}, true},

		// Compares are a conjunction.
		{"all hold", []kv.Cmp{kv.CmpExists(key), kv.CmpMissing(missing), kv.CmpVersion(key, kv.Equal, 2)}, true},
		{"one fails", []kv.Cmp{kv.CmpExists(key), kv.CmpExists(missing)}, false},
		{"last fails", []kv.Cmp{kv.CmpMissing(missing), kv.CmpValue(key, kv.Equal, []byte("zz"))}, false},
		{"no compares", nil, true},
	}
	for _, c := range cases {
		resp := txn(t, s.ctx, s.b, kv.Txn{If: c.cmps})
		require.Equal(t, c.want, resp.Succeeded, "compare %q", c.name)
		require.Equal(t, before, resp.Revision, "compare %q: a txn without writes reports the read revision", c.name)
	}
	require.Equal(t, before, currentRevision(t, s.ctx, s.b))
}

func txnFailedRunsElse(t *testing.T, s *sc) {
	put(t, s.ctx, s.b, "else/k", "a")
	tx := func(want string) kv.Txn {
		return kv.Txn{
			If:   []kv.Cmp{kv.CmpValue("else/k", kv.Equal, []byte(want))},
			Then: []kv.Op{kv.OpPut("else/then", []byte("t"))},
			Else: []kv.Op{kv.OpPut("else/else", []byte("e")), kv.OpGet("else/k")},
		}
	}
	before := currentRevision(t, s.ctx, s.b)
	failed := txn(t, s.ctx, s.b, tx("b"))
	require.False(t, failed.Succeeded)
	require.Equal(t, before+1, failed.Revision, "the Else put is a write")
	require.Len(t, failed.Responses, 2, "one response per Else op")
	require.Nil(t, failed.Responses[0].KV)
	require.NotNil(t, failed.Responses[1].KV)
	require.Equal(t, "a", string(failed.Responses[1].KV.Value))
	requireMissing(t, s.ctx, s.b, "else/then")
	require.Equal(t, "e", string(get(t, s.ctx, s.b, "else/else").Value))
	require.Equal(t, failed.Revision, get(t, s.ctx, s.b, "else/else").ModRevision)

	// And the other way round: Then runs, Else does not.
	ok := txn(t, s.ctx, s.b, tx("a"))
	require.True(t, ok.Succeeded)
	require.Len(t, ok.Responses, 1, "one response per Then op")
	require.Equal(t, "t", string(get(t, s.ctx, s.b, "else/then").Value))
	require.Equal(t, failed.Revision, get(t, s.ctx, s.b, "else/else").ModRevision, "Else did not run again")
}

func txnGetInside(t *testing.T, s *sc) {
	put(t, s.ctx, s.b, "g/a", "1")
	put(t, s.ctx, s.b, "g/b", "2")
	a, b := get(t, s.ctx, s.b, "g/a"), get(t, s.ctx, s.b, "g/b")
	resp := txn(t, s.ctx, s.b, kv.Txn{Then: []kv.Op{
		kv.OpGet("g/a"),
		kv.OpPut("g/c", []byte("3")),
		kv.OpGet("g/missing"),
		kv.OpGet("g/b"),
	}})
	require.True(t, resp.Succeeded)
	require.Len(t, resp.Responses, 4, "responses follow the branch's ops")
	require.NotNil(t, resp.Responses[0].KV)
	requireSameKV(t, a, *resp.Responses[0].KV)
	require.Nil(t, resp.Responses[1].KV, "a put has no KV")
	require.Nil(t, resp.Responses[2].KV, "a Get of a missing key has no KV")
	require.NotNil(t, resp.Responses[3].KV)
	requireSameKV(t, b, *resp.Responses[3].KV)

	// A read-only txn's Gets, also in Else.
	ro := txn(t, s.ctx, s.b, kv.Txn{
		If:   []kv.Cmp{kv.CmpMissing("g/a")},
		Else: []kv.Op{kv.OpGet("g/c")},
	})
	require.False(t, ro.Succeeded)
	require.Equal(t, resp.Revision, ro.Revision)
	c := opKV(t, ro, 0)
	require.Equal(t, "3", string(c.Value))
	require.Equal(t, resp.Revision, c.CreateRevision)
}

func txnDeleteReportsDeleted(t *testing.T, s *sc) {
	put(t, s.ctx, s.b, "d/a", "1")
	put(t, s.ctx, s.b, "d/b", "2")
	before := currentRevision(t, s.ctx, s.b)
	resp := txn(t, s.ctx, s.b, kv.Txn{Then: []kv.Op{
		kv.OpDelete("d/a"),
		kv.OpDelete("d/missing"),
		kv.OpDelete("d/b"),
	}})
	require.Equal(t, before+1, resp.Revision, "both deletes share one revision")
	require.Len(t, resp.Responses, 3)
	require.Equal(t, []int64{1, 0, 1}, []int64{resp.Responses[0].Deleted, resp.Responses[1].Deleted, resp.Responses[2].Deleted})
	requireMissing(t, s.ctx, s.b, "d/a")
	requireMissing(t, s.ctx, s.b, "d/b")

	// A delete is exact: it does not remove keys it is a prefix of.
	put(t, s.ctx, s.b, "d/ab", "x")
	resp = txn(t, s.ctx, s.b, kv.Txn{Then: []kv.Op{kv.OpDelete("d/a")}})
	require.Len(t, resp.Responses, 1)
	require.Equal(t, int64(0), resp.Responses[0].Deleted)
	require.Equal(t, "x", string(get(t, s.ctx, s.b, "d/ab").Value))
}

func txnSameKeyTwice(t *testing.T, s *sc) {
	put(t, s.ctx, s.b, "dup/exists", "x")
	before := currentRevision(t, s.ctx, s.b)
	v := []byte("v")
	for name, tx := range map[string]kv.Txn{
		"put put":       {Then: []kv.Op{kv.OpPut("dup/other", v), kv.OpPut("dup/a", v), kv.OpPut("dup/a", v)}},
		"put delete":    {Then: []kv.Op{kv.OpPut("dup/other", v), kv.OpPut("dup/a", v), kv.OpDelete("dup/a")}},
		"delete delete": {Then: []kv.Op{kv.OpPut("dup/other", v), kv.OpDelete("dup/exists"), kv.OpDelete("dup/exists")}},
		"else put put":  {If: []kv.Cmp{kv.CmpMissing("dup/exists")}, Else: []kv.Op{kv.OpPut("dup/other", v), kv.OpPut("dup/a", v), kv.OpPut("dup/a", v)}},
		"then ok, else dup": {
			If:   []kv.Cmp{kv.CmpExists("dup/exists")},
			Then: []kv.Op{kv.OpPut("dup/other", v)},
			Else: []kv.Op{kv.OpPut("dup/a", v), kv.OpPut("dup/a", v)},
		},
	} {
		_, err := s.b.Txn(s.ctx, tx)
		require.ErrorIs(t, err, kv.ErrInvalidTxn, "%s", name)
	}
	requireMissing(t, s.ctx, s.b, "dup/a")
	requireMissing(t, s.ctx, s.b, "dup/other")
	require.Equal(t, "x", string(get(t, s.ctx, s.b, "dup/exists").Value))
	require.Equal(t, before, currentRevision(t, s.ctx, s.b), "rejected txns write nothing")

	// The same key once in Then and once in Else is fine: the rule is per
	// branch.
	resp := txn(t, s.ctx, s.b, kv.Txn{
		If:   []kv.Cmp{kv.CmpMissing("dup/a")},
		Then: []kv.Op{kv.OpPut("dup/a", []byte("then"))},
		Else: []kv.Op{kv.OpPut("dup/a", []byte("else"))},
	})
	require.True(t, resp.Succeeded)
	require.Equal(t, "then", string(get(t, s.ctx, s.b, "dup/a").Value))
}

func txnUnknownLease(t *testing.T, s *sc) {
	id, err := s.b.Grant(s.ctx, time.Minute)
	require.NoError(t, err)
	require.NoError(t, s.b.Revoke(s.ctx, id))
	before := currentRevision(t, s.ctx, s.b)

	_, err = s.b.Txn(s.ctx, kv.Txn{Then: []kv.Op{
		kv.OpPut("ul/plain", []byte("x")),
		kv.OpPutLease("ul/leased", []byte("y"), id),
	}})
	require.ErrorIs(t, err, kv.ErrLeaseNotFound, "a put on a revoked lease")
	requireMissing(t, s.ctx, s.b, "ul/plain")
	requireMissing(t, s.ctx, s.b, "ul/leased")
	require.Equal(t, before, currentRevision(t, s.ctx, s.b), "nothing written")

	// The same when the put is in the Else branch that runs.
	_, err = s.b.Txn(s.ctx, kv.Txn{
		If:   []kv.Cmp{kv.CmpExists("ul/plain")},
		Else: []kv.Op{kv.OpPut("ul/plain", []byte("x")), kv.OpPutLease("ul/leased", nil, id)},
	})
	require.ErrorIs(t, err, kv.ErrLeaseNotFound, "a put on a revoked lease in the Else branch")
	requireMissing(t, s.ctx, s.b, "ul/plain")
	require.Equal(t, before, currentRevision(t, s.ctx, s.b), "nothing written")
}
