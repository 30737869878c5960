package chaos

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/chanwatch/chanwatch/channelmgr"
	"github.com/chanwatch/chanwatch/internal/etcdembed"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/etcdkv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/nodewatch"
)

// pki is a test CA with a server certificate for 127.0.0.1 and a client
// certificate, all written to dir.
type pki struct {
	ca, serverCert, serverKey, clientCert, clientKey string
	keyPEM                                           []byte // the client key, to look for in logs
}

func newPKI(t testing.TB, dir string) *pki {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "chanwatch-test-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{}
	write := func(name string, typ string, der []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	p.ca = write("ca.pem", "CERTIFICATE", caDER)
	issue := func(serial int64, cn string, usage x509.ExtKeyUsage, ips []net.IP) (string, string, []byte) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return write(cn+".pem", "CERTIFICATE", der), write(cn+"-key.pem", "EC PRIVATE KEY", kder), kder
	}
	p.serverCert, p.serverKey, _ = issue(2, "etcd-server", x509.ExtKeyUsageServerAuth, []net.IP{net.ParseIP("127.0.0.1")})
	// The client certificate's CN names no etcd user: without a password
	// the client has no identity at all.
	var kder []byte
	p.clientCert, p.clientKey, kder = issue(3, "chanwatch-client", x509.ExtKeyUsageClientAuth, nil)
	p.keyPEM = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	return p
}

// tlsClient connects with the client certificate and, when user is set,
// a user name and password.
func (p *pki) tlsClient(t testing.TB, endpoint, user, password string, lg *zap.Logger) *clientv3.Client {
	t.Helper()
	info := transport.TLSInfo{CertFile: p.clientCert, KeyFile: p.clientKey, TrustedCAFile: p.ca}
	tc, err := info.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, TLS: tc,
		Username: user, Password: password, Logger: lg,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// TestSecurityTLSAuth runs the whole protocol (a coordinator and two nodes
// through etcdkv) against etcd with TLS (client certificates required) and
// authentication on, as user chanwatch whose role covers only the root
// prefix; then shows that a client without credentials, and a user whose
// role lacks the root prefix, are refused with kv.ErrPermissionDenied and
// change nothing; and that no log line at info level or above holds the
// password, the client key or a ChannelInfo payload.
//
// raftkv has no TLS or auth (its doc says so; that is its owner's work):
// it is not tested here.
func TestSecurityTLSAuth(t *testing.T) {
	r := newReport(t)
	dir := t.TempDir()
	p := newPKI(t, dir)
	srv := etcdembed.NewForTest(t, etcdembed.WithEmbedConfig(func(cfg *embed.Config) {
		// bcrypt's minimum cost: the race detector makes the default one
		// take seconds per authentication.
		cfg.BcryptCost = 4
		cfg.ClientTLSInfo = transport.TLSInfo{CertFile: p.serverCert, KeyFile: p.serverKey, TrustedCAFile: p.ca, ClientCertAuth: true}
		// TLS needs the https scheme on the same host:port.
		for i := range cfg.ListenClientUrls {
			cfg.ListenClientUrls[i].Scheme = "https"
		}
		for i := range cfg.AdvertiseClientUrls {
			cfg.AdvertiseClientUrls[i].Scheme = "https"
		}
	}))
	endpoint := strings.Replace(srv.Endpoints()[0], "http://", "https://", 1)
	const (
		root       = "milvus/meta"
		rootPass   = "root-Secret-9f2c"
		cwPass     = "chanwatch-Secret-71ad"
		otherPass  = "other-Secret-33be"
		seekMarker = "SEEK-POSITION-PAYLOAD-5e1d"
	)
	ctx, cancel := context.WithTimeout(testCtx(t), time.Minute)
	defer cancel()

	// Users and roles, then auth on.
	admin := p.tlsClient(t, endpoint, "", "", zap.NewNop())
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(admin.UserAdd(ctx, "root", rootPass))
	must(admin.UserGrantRole(ctx, "root", "root"))
	for _, u := range []struct{ user, pass, prefix string }{{"chanwatch", cwPass, root + "/"}, {"other", otherPass, "other-app/"}} {
		must(admin.RoleAdd(ctx, u.user))
		must(admin.RoleGrantPermission(ctx, u.user, u.prefix, clientv3.GetPrefixRangeEnd(u.prefix), clientv3.PermissionType(clientv3.PermReadWrite)))
		must(admin.UserAdd(ctx, u.user, u.pass))
		must(admin.UserGrantRole(ctx, u.user, u.user))
	}
	must(admin.AuthEnable(ctx))
	rootCli := p.tlsClient(t, endpoint, "root", rootPass, zap.NewNop())

	// The protocol, logging at info level into an observer.
	core, logs := observer.New(zapcore.InfoLevel)
	lg := zap.New(core)
	tm := fastTiming(2 * srv.MinLeaseTTL())
	l := newLedger(r)
	open := func(name string) kv.Backend {
		cli := p.tlsClient(t, endpoint, "chanwatch", cwPass, lg.Named(name+"-client"))
		b, err := etcdkv.New(cli, root, etcdkv.WithLogger(lg.Named(name+"-kv")))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		return b
	}
	obs := open("observer")
	coord := startCoord(t, "coord", open("coord"), func() {}, tm, channelmgr.WithLogger(lg.Named("coord")))
	n1 := startNode(t, l, "n1", open("n1"), func() {}, tm, nodewatch.WithLogger(lg.Named("n1")))
	n2 := startNode(t, l, "n2", open("n2"), func() {}, tm, nodewatch.WithLogger(lg.Named("n2")))
	for i := range 6 {
		vch, _ := json.Marshal(map[string]any{"seek_position": seekMarker, "segments": []int{i, i + 1}})
		if err := channelmgr.Register(ctx, obs, meta.ChannelSpec{Name: fmt.Sprintf("tls-%d", i), CollectionID: 7, Vchannel: vch}); err != nil {
			t.Fatal(err)
		}
	}
	awaitConvergence(t, r, obs, []*member{n1, n2}, l, tm.ttl, 30*time.Second, time.Now())
	// A drain and a node crash, so that moves and failover log too.
	r.fault("node n1 crashed")
	l.crash("n1")
	n1.kill()
	awaitConvergence(t, r, obs, []*member{n2}, l, tm.ttl, 30*time.Second, time.Now())

	// Refused clients change nothing.
	before, err := rootCli.Get(ctx, "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	refused := 0
	for _, c := range []struct{ what, user, pass string }{
		{"no credentials", "", ""},
		{"a role without the root prefix", "other", otherPass},
		{"a wrong password", "chanwatch", "not-the-password"},
	} {
		var cli *clientv3.Client
		if c.user == "" {
			cli = p.tlsClient(t, endpoint, "", "", zap.NewNop())
		} else {
			// A wrong password fails already in clientv3.New.
			info := transport.TLSInfo{CertFile: p.clientCert, KeyFile: p.clientKey, TrustedCAFile: p.ca}
			tc, err := info.ClientConfig()
			if err != nil {
				t.Fatal(err)
			}
			cli, err = clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, TLS: tc,
				Username: c.user, Password: c.pass, Logger: zap.NewNop()})
			if err != nil {
				if !errors.Is(etcdErr(err), kv.ErrPermissionDenied) {
					t.Errorf("%s: clientv3.New = %v, want an auth failure", c.what, err)
				}
				refused++
				continue
			}
			t.Cleanup(func() { _ = cli.Close() })
		}
		b, err := etcdkv.New(cli, root)
		if err != nil {
			t.Fatal(err)
		}
		calls := map[string]error{}
		_, calls["put"] = kv.Put(ctx, b, meta.RegistryKey("intruder"), []byte("x"))
		_, _, calls["list"] = b.List(ctx, meta.ChannelPrefix)
		_, calls["grant"] = b.Grant(ctx, 5*time.Second)
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		resp, okResp := <-b.Watch(wctx, meta.ChannelPrefix, 1)
		wcancel()
		if okResp {
			calls["watch"] = resp.Err
		}
		calls["deregister"] = channelmgr.Deregister(ctx, b, "tls-0")
		for op, err := range calls {
			if errors.Is(err, kv.ErrPermissionDenied) {
				refused++
				continue
			}
			if op == "grant" && err == nil {
				continue // etcd lets any client grant a lease: it writes no key
			}
			r.violate("%s: %s = %v, want kv.ErrPermissionDenied", c.what, op, err)
		}
		_ = b.Close()
	}
	after, err := rootCli.Get(ctx, "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(after.Kvs) != len(before.Kvs) || after.Header.Revision != before.Header.Revision && !onlyProtocolChanges(before, after, root) {
		r.violate("refused clients changed the store: %d keys at rev %d, then %d at rev %d", len(before.Kvs), before.Header.Revision, len(after.Kvs), after.Header.Revision)
	}
	for _, kvp := range after.Kvs {
		if strings.Contains(string(kvp.Key), "intruder") {
			r.violate("refused client wrote %s", kvp.Key)
		}
	}
	r.figure("refused_calls", refused)

	coord.stop()
	n2.stop()
	l.figures()

	// Nothing secret in the logs at info level or above.
	secrets := map[string]string{"root password": rootPass, "chanwatch password": cwPass, "other password": otherPass,
		"client key": string(p.keyPEM[40:80]), "ChannelInfo payload": seekMarker}
	lines := 0
	for _, e := range logs.All() {
		lines++
		line := e.Message
		for k, v := range e.ContextMap() {
			line += fmt.Sprintf(" %s=%v", k, v)
		}
		for what, s := range secrets {
			if strings.Contains(line, s) {
				r.violate("log line at %v holds the %s: %s", e.Level, what, line)
			}
		}
	}
	r.figure("log_lines_checked", lines)
	if lines == 0 {
		t.Fatal("the protocol run logged nothing at info level: the log check checked nothing")
	}
}

// etcdErr maps a clientv3.New error through etcdkv's error mapping by way of
// its text: clientv3.New returns the raw rpctypes error.
func etcdErr(err error) error {
	if strings.Contains(err.Error(), "authentication failed") || strings.Contains(err.Error(), "permission denied") {
		return fmt.Errorf("%w: %v", kv.ErrPermissionDenied, err)
	}
	return err
}

// onlyProtocolChanges: the protocol keeps heart-beating (lease keep-alives
// write nothing, but progress does), so compare key sets outside channel
// states.
func onlyProtocolChanges(before, after *clientv3.GetResponse, root string) bool {
	keys := func(r *clientv3.GetResponse) string {
		var out []string
		for _, k := range r.Kvs {
			out = append(out, string(k.Key))
		}
		return strings.Join(out, ",")
	}
	return keys(before) == keys(after)
}
