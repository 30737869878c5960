package conformance

import (
	"testing"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/stretchr/testify/require"
)

// RunKVPrefix checks that prefixes match raw strings within a root, that a
// prefix ending in '/' keeps node 1 from seeing node 12, and that two Envs
// never see each other's keys.
func RunKVPrefix(t *testing.T, f Factory) {
	runScenarios(t, f, []scenario{
		{"DirectoryPrefixExcludesSibling", prefixDirectory},
		{"RawStringPrefix", prefixRaw},
		{"EnvsAreIsolated", prefixEnvsIsolated},
	})
}

// siblingKeys are written by the prefix scenarios: "a/1/" must see only the
// first two.
var siblingKeys = []string{"a/1/x", "a/1/y", "a/12/x", "a/1", "a/1x", "a/10/y", "b/1/x"}

func prefixDirectory(t *testing.T, s *sc) {
	r0 := currentRevision(t, s.ctx, s.b)
	for _, k := range siblingKeys {
		put(t, s.ctx, s.b, k, k)
	}
	items, _, err := s.b.List(s.ctx, "a/1/")
	require.NoError(t, err)
	require.Equal(t, []string{"a/1/x", "a/1/y"}, keysOf(items), "prefix a/1/ excludes a/12/, a/1x and a/1")

	w := startWatch(t, s.ctx, s.b, "a/1/", r0+1)
	got := digest(w.next(2))
	require.Equal(t, []evt{putEvt("a/1/x", "a/1/x", r0+1), putEvt("a/1/y", "a/1/y", r0+2)}, got)
	put(t, s.ctx, s.b, "a/12/z", "z") // must not show up before the sentinel
	w.requireNoMore(s.ctx, s.b, "a/1/")
}

func prefixRaw(t *testing.T, s *sc) {
	for _, k := range siblingKeys {
		put(t, s.ctx, s.b, k, k)
	}
	items, _, err := s.b.List(s.ctx, "a/1")
	require.NoError(t, err)
	require.Equal(t, []string{"a/1", "a/1/x", "a/1/y", "a/10/y", "a/12/x", "a/1x"}, keysOf(items),
		"a prefix without a trailing '/' matches raw strings")
	items, _, err = s.b.List(s.ctx, "a/1/x")
	require.NoError(t, err)
	require.Equal(t, []string{"a/1/x"}, keysOf(items), "a full key is a prefix of itself")
	items, _, err = s.b.List(s.ctx, "a/1/xx")
	require.NoError(t, err)
	require.Empty(t, items)
}

func prefixEnvsIsolated(t *testing.T, s *sc) {
	// A second Env from the same Factory. On a shared server it gets another
	// root, which may be a string prefix of the first or the other way round:
	// the backend must still keep them apart.
	env2 := s.f(t)
	b2 := env2.Open(t)
	for _, k := range []string{"k", "kk", "x/1"} {
		put(t, s.ctx, s.b, k, "one")
	}
	for _, k := range []string{"k", "r", "rk", "x/2"} {
		put(t, s.ctx, b2, k, "two")
	}
	items1, _, err := s.b.List(s.ctx, "")
	require.NoError(t, err)
	require.Equal(t, []string{"k", "kk", "x/1"}, keysOf(items1), "the first Env sees only its own keys")
	for _, it := range items1 {
		require.Equal(t, "one", string(it.Value))
	}
	items2, _, err := b2.List(s.ctx, "")
	require.NoError(t, err)
	require.Equal(t, []string{"k", "r", "rk", "x/2"}, keysOf(items2), "the second Env sees only its own keys")
	for _, it := range items2 {
		require.Equal(t, "two", string(it.Value))
	}
	requireMissing(t, s.ctx, b2, "kk")
	requireMissing(t, s.ctx, s.b, "rk")

	// A delete in one leaves the other's key of the same name.
	_, deleted, err := kv.Delete(s.ctx, b2, "k")
	require.NoError(t, err)
	require.True(t, deleted)
	require.Equal(t, "one", string(get(t, s.ctx, s.b, "k").Value))
}
