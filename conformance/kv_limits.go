package conformance

import (
	"fmt"
	"testing"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/stretchr/testify/require"
)

// RunKVLimits checks MaxTxnOps: the largest txn succeeds, one op more fails
// whole with ErrTxnTooLarge in any of If, Then and Else.
func RunKVLimits(t *testing.T, f Factory) {
	runScenarios(t, f, []scenario{
		{"ExactlyMaxTxnOps", limitsExactlyMax},
		{"TooManyThenOps", func(t *testing.T, s *sc) { limitsTooMany(t, s, "then") }},
		{"TooManyIfCompares", func(t *testing.T, s *sc) { limitsTooMany(t, s, "if") }},
		{"TooManyElseOps", func(t *testing.T, s *sc) { limitsTooMany(t, s, "else") }},
	})
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
