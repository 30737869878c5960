//go:build !chaos

package chaos

import (
	"testing"

	"github.com/chanwatch/chanwatch/internal/etcdembed"
)

// startEtcd starts the short version's etcd: one member in this process,
// fast timers (1s minimum lease TTL). It cannot kill a member.
func startEtcd(t testing.TB) *etcdCluster {
	t.Helper()
	srv := etcdembed.NewForTest(t)
	return &etcdCluster{endpoints: srv.Endpoints(), minTTL: srv.MinLeaseTTL(), maxOps: srv.MaxTxnOps()}
}
