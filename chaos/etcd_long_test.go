//go:build chaos

package chaos

import (
	"context"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/internal/etcdproc"
)

// startEtcd starts the long version's etcd: three bin/etcd processes (built
// if missing) with fast timers; kill is SIGKILL, restart waits until the
// member serves again.
func startEtcd(t testing.TB) *etcdCluster {
	t.Helper()
	c := etcdproc.NewForTest(t, 3)
	return &etcdCluster{
		endpoints: c.Endpoints(),
		minTTL:    c.MinLeaseTTL(),
		maxOps:    c.MaxTxnOps(),
		kill:      c.Kill,
		restart: func(i int) error {
			if err := c.Restart(i); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			return c.WaitHealthy(ctx, i)
		},
	}
}
