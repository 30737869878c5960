package conformance

import (
	"fmt"
	"testing"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/stretchr/testify/require"
)

// RunKVLimits checks MaxTxnOps and MaxTxnBytes: the largest txn succeeds,
// one op or one byte more fails whole with ErrTxnTooLarge in any of If,
// Then and Else.
func RunKVLimits(t *testing.T, f Factory) {
	runScenarios(t, f, []scenario{
		{"ExactlyMaxTxnOps", limitsExactlyMax},
		{"TooManyThenOps", func(t *testing.T, s *sc) { limitsTooMany(t, s, "then") }},
		{"TooManyIfCompares", func(t *testing.T, s *sc) { limitsTooMany(t, s, "if") }},
		{"TooManyElseOps", func(t *testing.T, s *sc) { limitsTooMany(t, s, "else") }},
		{"ExactlyMaxTxnBytes", limitsExactlyMaxBytes},
		{"TooManyThenBytes", func(t *testing.T, s *sc) { limitsTooManyBytes(t, s, "then") }},
		{"TooManyIfBytes", func(t *testing.T, s *sc) { limitsTooManyBytes(t, s, "if") }},
		{"TooManyElseBytes", func(t *testing.T, s *sc) { limitsTooManyBytes(t, s, "else") }},
	})
}

// bytesTxn is a txn of exactly size bytes (kv.TxnBytes) whose bulk sits in
// branch: a put's value in Then or Else, or a compare's value in If. The
// compare on "lim/exists" holds, so Then runs.
func bytesTxn(t *testing.T, branch string, size int) kv.Txn {
	t.Helper()
	tx := kv.Txn{
		If:   []kv.Cmp{kv.CmpExists("lim/exists")},
		Then: []kv.Op{kv.OpPut("lim/big/then", nil)},
		Else: []kv.Op{kv.OpPut("lim/big/else", nil)},
	}
	fill := size - kv.TxnBytes(tx)
	require.Positive(t, fill, "MaxTxnBytes %d leaves room for a value", size)
	bulk := make([]byte, fill)
	for i := range bulk {
		bulk[i] = byte('a' + i%26)
	}
	switch branch {
	case "then":
		tx.Then[0].Value = bulk
	case "else":
		tx.Else[0].Value = bulk
	case "if":
		// A value compare with a NotEqual result holds on any other value.
		tx.If = append(tx.If, kv.CmpValue("lim/exists", kv.NotEqual, bulk[:fill-kv.TxnEntryOverhead-len("lim/exists")]))
	}
	require.Equal(t, size, kv.TxnBytes(tx))
	return tx
}

func limitsExactlyMaxBytes(t *testing.T, s *sc) {
	m := s.b.MaxTxnBytes()
	require.Positive(t, m, "MaxTxnBytes")
	put(t, s.ctx, s.b, "lim/exists", "x")
	for _, branch := range []string{"then", "else", "if"} {
		r0 := currentRevision(t, s.ctx, s.b)
		tx := bytesTxn(t, branch, m)
		resp := txn(t, s.ctx, s.b, tx)
		require.True(t, resp.Succeeded, "%s: a txn of exactly MaxTxnBytes (%d) runs", branch, m)
		require.Equal(t, r0+1, resp.Revision, "%s: one txn, one revision", branch)
		got, _, err := s.b.Get(s.ctx, "lim/big/then")
		require.NoError(t, err)
		require.Equal(t, len(tx.Then[0].Value), len(got.Value), "%s: the value is stored whole", branch)
		require.Equal(t, m, s.b.MaxTxnBytes(), "MaxTxnBytes is constant")
	}
}

func limitsTooManyBytes(t *testing.T, s *sc, branch string) {
	m := s.b.MaxTxnBytes()
	require.Positive(t, m, "MaxTxnBytes")
	put(t, s.ctx, s.b, "lim/exists", "x")
	before := currentRevision(t, s.ctx, s.b)
	tx := bytesTxn(t, branch, m+1)
	for i := 0; i < 2; i++ {
		// Refused the same way every time: never an unknown outcome.
		_, err := s.b.Txn(s.ctx, tx)
		require.ErrorIs(t, err, kv.ErrTxnTooLarge, "%d bytes with the bulk in %s, max %d", m+1, branch, m)
		require.NotErrorIs(t, err, kv.ErrUnknownOutcome)
	}
	items, _, err := s.b.List(s.ctx, "lim/")
	require.NoError(t, err)
	require.Equal(t, []string{"lim/exists"}, keysOf(items), "a txn that is too large writes nothing")
	require.Equal(t, before, currentRevision(t, s.ctx, s.b))
}

func limitKey(branch string, i int) string { return fmt.Sprintf("lim/%s/%05d", branch, i) }

func limitPuts(branch string, n int) []kv.Op {
	ops := make([]kv.Op, n)
	for i := range ops {
		ops[i] = kv.OpPut(limitKey(branch, i), []byte("x"))
	}
	return ops
}

func limitCmps(n int) []kv.Cmp {
	cmps := make([]kv.Cmp, n)
	for i := range cmps {
		cmps[i] = kv.CmpMissing(limitKey("cmp", i))
	}
	return cmps
}

func limitsExactlyMax(t *testing.T, s *sc) {
	m := s.b.MaxTxnOps()
	require.Positive(t, m, "MaxTxnOps")
	r0 := currentRevision(t, s.ctx, s.b)
	resp := txn(t, s.ctx, s.b, kv.Txn{If: limitCmps(m), Then: limitPuts("then", m), Else: limitPuts("else", m)})
	require.True(t, resp.Succeeded, "%d missing-key compares hold", m)
	require.Equal(t, r0+1, resp.Revision, "one txn, one revision")
	require.Len(t, resp.Responses, m)
	items, _, err := s.b.List(s.ctx, "lim/then/")
	require.NoError(t, err)
	require.Len(t, items, m, "all %d puts of a MaxTxnOps txn are written", m)

	// Max in the Else branch that runs.
	resp = txn(t, s.ctx, s.b, kv.Txn{If: []kv.Cmp{kv.CmpMissing(limitKey("then", 0))}, Else: limitPuts("else", m)})
	require.False(t, resp.Succeeded)
	items, _, err = s.b.List(s.ctx, "lim/else/")
	require.NoError(t, err)
	require.Len(t, items, m)

	// And max deletes.
	dels := make([]kv.Op, m)
	for i := range dels {
		dels[i] = kv.OpDelete(limitKey("then", i))
	}
	resp = txn(t, s.ctx, s.b, kv.Txn{Then: dels})
	for i, r := range resp.Responses {
		require.Equal(t, int64(1), r.Deleted, "delete %d", i)
	}
}

func limitsTooMany(t *testing.T, s *sc, branch string) {
	m := s.b.MaxTxnOps()
	require.Positive(t, m, "MaxTxnOps")
	put(t, s.ctx, s.b, "lim/exists", "x")
	before := currentRevision(t, s.ctx, s.b)
	var tx kv.Txn
	switch branch {
	case "then":
		tx = kv.Txn{Then: limitPuts("then", m+1)}
	case "if":
		tx = kv.Txn{If: limitCmps(m + 1), Then: limitPuts("then", 1)}
	case "else":
		// Too large even though the Else branch would not run.
		tx = kv.Txn{If: []kv.Cmp{kv.CmpExists("lim/exists")}, Then: limitPuts("then", 1), Else: limitPuts("else", m+1)}
	}
	_, err := s.b.Txn(s.ctx, tx)
	require.ErrorIs(t, err, kv.ErrTxnTooLarge, "%d entries in %s, max %d", m+1, branch, m)
	items, _, err := s.b.List(s.ctx, "lim/")
	require.NoError(t, err)
	require.Equal(t, []string{"lim/exists"}, keysOf(items), "a txn that is too large writes nothing")
	require.Equal(t, before, currentRevision(t, s.ctx, s.b))
}
