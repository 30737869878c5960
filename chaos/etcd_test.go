package chaos

import (
	"net/url"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/chanwatch/chanwatch/internal/netproxy"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/etcdkv"
)

// etcdCluster is the etcd a test runs against: one in-process member in the
// short version, three bin/etcd processes in the long one (etcd_long_test.go).
type etcdCluster struct {
	endpoints []string
	minTTL    time.Duration
	maxOps    int
	// kill and restart act on member i; nil when the cluster cannot (the
	// in-process member of the short version).
	kill, restart func(i int) error
}

func (c *etcdCluster) members() int { return len(c.endpoints) }

// client returns a client on every member. With proxied, each endpoint goes
// through a proxy of its own, returned so that the test can cut this one
// client off. Keep-alive pings are short so that a blackholed connection is
// noticed (and another member tried) within a second or two.
func (c *etcdCluster) client(t testing.TB, proxied bool) (*clientv3.Client, []*netproxy.Proxy) {
	t.Helper()
	eps := c.endpoints
	var proxies []*netproxy.Proxy
	if proxied {
		eps, proxies = c.proxied(t)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            eps,
		DialTimeout:          2 * time.Second,
		DialKeepAliveTime:    time.Second,
		DialKeepAliveTimeout: time.Second,
		Logger:               zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli, proxies
}

// proxied puts a proxy of its own in front of every member and returns the
// proxies' endpoint URLs, for a client (or a process) the test can cut off.
func (c *etcdCluster) proxied(t testing.TB) ([]string, []*netproxy.Proxy) {
	t.Helper()
	var eps []string
	var proxies []*netproxy.Proxy
	for _, ep := range c.endpoints {
		u, err := url.Parse(ep)
		if err != nil {
			t.Fatal(err)
		}
		p, err := netproxy.New(u.Host)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = p.Close() })
		proxies = append(proxies, p)
		eps = append(eps, u.Scheme+"://"+p.Addr())
	}
	return eps, proxies
}

// backend wraps cli into an etcdkv backend on root.
func (c *etcdCluster) backend(t testing.TB, cli *clientv3.Client, root string) kv.Backend {
	t.Helper()
	b, err := etcdkv.New(cli, root, etcdkv.WithMaxTxnOps(c.maxOps))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// uniqueRoot is a root no other test of this process uses.
func uniqueRoot(t testing.TB) string {
	return "chaos/" + strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()) + "/" + time.Now().Format("150405.000000000")
}

func setMode(ps []*netproxy.Proxy, m netproxy.Mode) {
	for _, p := range ps {
		p.SetMode(m)
	}
}
