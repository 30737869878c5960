package conformance

import (
	"context"
	"testing"

	"github.com/jonboulle/clockwork"

	"github.com/chanwatch/chanwatch/kv"
)

// Env is one scenario's store.
type Env struct {
	// Open returns a new client handle on the scenario's store and root; the
	// suite may open several (an independent observer, or one handle per
	// simulated process). Handles are independent: closing one (a crash)
	// leaves the others working. Open registers the handle's Close with
	// t.Cleanup.
	Open func(t testing.TB) kv.Backend
	// Clock drives the backend's lease TTLs. When it is a
	// clockwork.FakeClock the suite advances it instead of waiting in real
	// time. Nil means the real clock.
	Clock clockwork.Clock
}

// Factory returns an Env on a fresh, empty store (memkv) or a fresh root on
// a shared server (etcd). The suite calls it once per scenario (twice in the
// scenario that checks two Envs are isolated), from the scenario's test.
type Factory func(t testing.TB) Env

// RunKV runs every KV capability group as subtests of t:
// Basic, Txn, Revisions, Prefix, Watch, Lease, Limits, Concurrency.
func RunKV(t *testing.T, f Factory) {
	t.Run("Basic", func(t *testing.T) { RunKVBasic(t, f) })
	t.Run("Txn", func(t *testing.T) { RunKVTxn(t, f) })
	t.Run("Revisions", func(t *testing.T) { RunKVRevisions(t, f) })
	t.Run("Prefix", func(t *testing.T) { RunKVPrefix(t, f) })
	t.Run("Watch", func(t *testing.T) { RunKVWatch(t, f) })
	t.Run("Lease", func(t *testing.T) { RunKVLease(t, f) })
	t.Run("Limits", func(t *testing.T) { RunKVLimits(t, f) })
	t.Run("Concurrency", func(t *testing.T) { RunKVConcurrency(t, f) })
}

// sc is what a scenario starts with: its Env and Factory, a first handle on
// the store and a context bounded by the scenario.
type sc struct {
	env Env
	f   Factory
	b   kv.Backend
	ctx context.Context
}

// scenario is one named conformance check.
type scenario struct {
	name string
	run  func(t *testing.T, s *sc)
}

// runScenarios runs each scenario as a subtest on a fresh Env. Scenarios run
// one after another, never in parallel: several check exact revision
// arithmetic, which only holds while nothing else writes to the store, and
// an etcd server's revision is shared by every root on it.
func runScenarios(t *testing.T, f Factory, scenarios []scenario) {
	for _, s := range scenarios {
		t.Run(s.name, func(t *testing.T) {
			env := f(t)
			if env.Clock == nil {
				env.Clock = clockwork.NewRealClock()
			}
			s.run(t, &sc{env: env, f: f, b: env.Open(t), ctx: scenarioContext(t)})
		})
	}
}
