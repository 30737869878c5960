// Package conformance holds the exported suites every chanwatch backend's
// tests run, so that memkv, etcdkv, raftkv and any third-party backend are
// held to one contract: package kv's (see its doc), checked scenario by
// scenario.
//
// RunKV runs the KV suite as subtests grouped by capability, as valkeyrie's
// testsuite does: Basic, Txn, Revisions, Prefix, Watch, Lease, Limits and
// Concurrency, each also exported on its own (RunKVBasic, RunKVTxn, ...) for
// a backend that wants to run them apart. Scenario names are the same on
// every backend (TestKV/<backend>/<Group>/<Scenario>), so a failure on one
// backend can be compared with the others by name.
//
// The suite is given a Factory, as Vitess's go/vt/topo/test is: each scenario
// calls it for an Env on a fresh, empty store or a fresh root on a shared
// server, and opens as many handles on it as it needs (an independent
// observer, one handle per simulated process). Scenarios that need time to
// pass (lease TTLs) advance the Env's clock when it is a
// clockwork.FakeClock, and wait in real time otherwise; the lease scenarios
// grant 1s TTLs, so a real server must allow them (etcd with short raft
// timers: see internal/etcdembed's WithFastTimers).
//
// What a backend's Factory must provide:
//   - Isolation: two Envs never see each other's keys, even when one root is
//     a string prefix of the other.
//   - Quiet: scenarios run one at a time and check exact revision
//     arithmetic ("one write txn, one revision"), so nothing else may write
//     to the store while a scenario runs. On a shared etcd server every root
//     shares one revision counter: do not run the suite in parallel with
//     other writers of the same server. The suite itself revokes the leases
//     it grants, so none expires into a later scenario.
//   - Compaction is global on etcd: the Watch and Revisions scenarios compact
//     the server at their own, current revisions, which never disturbs a
//     later scenario, but would disturb a concurrent user of the server.
//   - Open registers the handle's Close with t.Cleanup and tolerates the
//     scenario having closed it already (ErrClosed from a second Close).
//
// A third-party backend runs the suite from its own tests:
//
//	package mykv_test
//
//	import (
//		"testing"
//
//		"github.com/jonboulle/clockwork"
//
//		"github.com/chanwatch/chanwatch/conformance"
//		"github.com/chanwatch/chanwatch/kv"
//		"example.com/mykv"
//	)
//
//	func TestConformance(t *testing.T) {
//		conformance.RunKV(t, func(t testing.TB) conformance.Env {
//			clock := clockwork.NewFakeClock()
//			store := mykv.NewStore(mykv.WithClock(clock)) // fresh and empty
//			t.Cleanup(store.Shutdown)
//			return conformance.Env{
//				Open: func(t testing.TB) kv.Backend {
//					b := store.Connect() // one independent handle
//					t.Cleanup(func() { _ = b.Close() })
//					return b
//				},
//				Clock: clock,
//			}
//		})
//	}
//
// The suites must not depend on any backend: RunKV imports only package kv
// and test libraries, RunMEP adds the protocol packages it exercises (meta,
// session, channelmgr, nodewatch), and neither reaches into a backend for its
// checks (everything goes through kv.Backend, as a chanwatch component would).
// The shared helpers (eventually, passTime, watchStream) are unexported.
package conformance
