package conformance_test

import (
	"flag"
	"testing"

	"github.com/chanwatch/chanwatch/conformance"
)

func init() {
	flag.Int64Var(&conformance.ChurnSeed, "seed", 0, "RandomizedChurn's seed (0: from the time; the test logs it)")
	flag.IntVar(&conformance.ChurnRounds, "rounds", 0, "RandomizedChurn's rounds (0: 60 on memkv, 30 on etcd)")
}

// TestMEP runs the MEP scenario suite on every backend, with the KV
// suite's factories: memkv on a fake clock, a fresh root on the shared
// in-process etcd server (real time, fast raft timers for 1-2 s TTLs), and
// a fresh root on a 3-node raftkv cluster (lease deadlines on a fake clock).
//
// The three run side by side (at most -parallel at once, GOMAXPROCS by
// default): etcd's scenarios wait on real time and are the long pole
// (about five minutes), while mem and raft, on fake clocks, fit beside it.
// Run one backend alone with -run 'TestMEP/mem' and so on.
func TestMEP(t *testing.T) {
	t.Run("etcd", func(t *testing.T) { t.Parallel(); conformance.RunMEP(t, etcdFactory(sharedEtcd(t))) })
	t.Run("mem", func(t *testing.T) { t.Parallel(); conformance.RunMEP(t, memFactory) })
	t.Run("raft", func(t *testing.T) { t.Parallel(); conformance.RunMEP(t, raftFactory(t)) })
}
