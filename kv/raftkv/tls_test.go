package raftkv

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/gob"
	"math/big"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
)

// testCA is a certificate authority made up for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	noErr(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          randSerial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	noErr(t, err)
	cert, err := x509.ParseCertificate(der)
	noErr(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue returns a certificate for 127.0.0.1, good for server and client
// authentication, signed by ca.
func (ca *testCA) issue(t testing.TB, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	noErr(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: randSerial(t),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	noErr(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func randSerial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	noErr(t, err)
	return n
}

// config is a node's mutual-TLS config: its certificate from ca, and
// trusting only ca.
func (ca *testCA) config(t testing.TB, name string) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{ca.issue(t, name)}, RootCAs: ca.pool}
}

// TestTLSOptionValidates: WithTLS rejects configs that cannot do mutual
// TLS, before anything is created.
func TestTLSOptionValidates(t *testing.T) {
	ca := newTestCA(t, "ca")
	cert := ca.issue(t, "node")
	good := Config{ID: "a", Addr: "127.0.0.1:0", Dir: filepath.Join(t.TempDir(), "a")}
	for name, cfg := range map[string]*tls.Config{
		"nil":            nil,
		"no certificate": {RootCAs: ca.pool},
		"no CA pool":     {Certificates: []tls.Certificate{cert}},
		"skip verify":    {Certificates: []tls.Certificate{cert}, RootCAs: ca.pool, InsecureSkipVerify: true},
	} {
		n, err := Open(good, WithTLS(cfg))
		if n != nil {
			_ = n.Close()
		}
		errIs(t, err, ErrInvalidConfig, name)
	}
	// ClientCAs alone is a CA pool too.
	n, err := Open(good, WithTLS(&tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: ca.pool}))
	noErr(t, err)
	noErr(t, n.Close())
}

// TestTLSCluster: a three-node cluster over mutual TLS serves writes
// forwarded by a follower, reads and watches. A node whose certificate
// comes from another CA is joined but never reaches or hears from the
// cluster, and connections that speak the forwarding protocol without a
// certificate from the cluster's CA (plaintext, another CA's, none) write
// nothing, while the same request with the cluster's certificate does.
func TestTLSCluster(t *testing.T) {
	ca, other := newTestCA(t, "cluster"), newTestCA(t, "other")
	c := startCluster(t, 3, WithTLS(ca.config(t, "node")))
	ctx := testContext(t)
	l := leader(t, c)
	ln, fn := c.Node(l), c.Node(follower(c, l))

	wctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wc := fn.Watch(wctx, "tls/", 0)
	rev, err := kv.Put(ctx, fn, "tls/a", []byte("1"))
	noErr(t, err)
	ev := nextEvents(t, wc)
	equal(t, len(ev), 1)
	equal(t, ev[0].KV.ModRevision, rev)
	got, _, err := ln.Get(ctx, "tls/a")
	noErr(t, err)
	equal(t, string(got.Value), "1")

	t.Run("rogue node", func(t *testing.T) {
		rogue, err := Open(Config{ID: "rogue", Addr: "127.0.0.1:0", Dir: filepath.Join(t.TempDir(), "rogue")},
			loopbackTimeouts, WithLogger(testLogger(t)), WithRequestTimeout(time.Second), WithTLS(other.config(t, "rogue")))
		noErr(t, err)
		defer func() { noErr(t, rogue.Close()) }()
		// Joined through a follower: the leader probes the node, the
		// handshake fails, and the refusal comes back forwarded.
		err = fn.Join(ctx, rogue.ID(), rogue.Addr())
		errIs(t, err, kv.ErrPermissionDenied, "join of a node with another CA's certificate")
		t.Logf("join of the rogue node: %v", err)
		cf := ln.raft.GetConfiguration()
		noErr(t, cf.Error())
		equal(t, len(cf.Configuration().Servers), 3, "members after the refused join")
		eventually(t, func() bool { return rogue.mux.rejected.Load() > 0 }, "the rogue node refuses the leader's connection")
		rev2, err := kv.Put(ctx, fn, "tls/b", []byte("2"))
		noErr(t, err, "the cluster writes with the rogue voter down")
		check(t, rev2 > rev)
		_, _, err = rogue.Get(ctx, "tls/a")
		errIs(t, err, kv.ErrUnavailable, "the rogue node knows no leader")
		equal(t, rogue.Leader(), "")
		equal(t, rogue.fsm.appliedIndex(), uint64(0), "the rogue node applied nothing")
		// Its dials to the cluster fail too: a forwarded Put from it
		// writes nothing.
		_, err = kv.Put(ctx, rogue, "tls/rogue", nil)
		check(t, err != nil, "a put through the rogue node succeeded")
		_, _, err = ln.Get(ctx, "tls/rogue")
		errIs(t, err, kv.ErrKeyNotFound)
	})

	t.Run("joiners refused", func(t *testing.T) {
		distrusting := ca.config(t, "distrusting")
		distrusting.RootCAs = other.pool // a cluster certificate, but refuses the cluster's
		for name, opt := range map[string]Option{
			"distrusts the cluster": WithTLS(distrusting),
			"plaintext":             WithLogger(testLogger(t)),
		} {
			j, err := Open(Config{ID: "j", Addr: "127.0.0.1:0", Dir: filepath.Join(t.TempDir(), "j")},
				loopbackTimeouts, WithLogger(testLogger(t)), opt)
			noErr(t, err, name)
			err = ln.Join(ctx, j.ID(), j.Addr())
			noErr(t, j.Close(), name)
			errIs(t, err, kv.ErrPermissionDenied, name)
			t.Logf("%s: %v", name, err)
			cf := ln.raft.GetConfiguration()
			noErr(t, cf.Error())
			equal(t, len(cf.Configuration().Servers), 3, "members after the refused join of %s", name)
		}
	})

	t.Run("rogue clients", func(t *testing.T) {
		addr := ln.Addr()
		dialTLS := func(cfg *tls.Config) func() (net.Conn, error) {
			return func() (net.Conn, error) {
				d := &tls.Dialer{Config: cfg}
				dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				return d.DialContext(dctx, "tcp", addr)
			}
		}
		// Trusts the cluster, so only its own certificate is wrong; sent
		// even though the server asks for the cluster CA's.
		rogueKey := other.issue(t, "rogue")
		rogueCert := &tls.Config{RootCAs: ca.pool, GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &rogueKey, nil
		}}
		// A peer that connects and never says anything holds only its
		// own goroutine: the connections below are still served.
		stalled, err := net.DialTimeout("tcp", addr, 5*time.Second)
		noErr(t, err)
		defer stalled.Close()
		for _, tc := range []struct {
			name string
			dial func() (net.Conn, error)
			ok   bool
		}{
			{"plaintext", func() (net.Conn, error) { return net.DialTimeout("tcp", addr, 5*time.Second) }, false},
			{"another CA", dialTLS(rogueCert), false},
			{"no certificate", dialTLS(&tls.Config{RootCAs: ca.pool}), false},
			{"cluster CA", dialTLS(ca.config(t, "client")), true},
		} {
			before, rejected := currentRev(t, ln), ln.mux.rejected.Load()
			key := "tls/" + tc.name
			err := rawPut(tc.dial, key)
			if !tc.ok {
				check(t, err != nil, "%s: the forwarded put was answered", tc.name)
				t.Logf("%s: %v", tc.name, err)
				// Refused at the handshake, before the request was read.
				eventually(t, func() bool { return ln.mux.rejected.Load() > rejected }, tc.name+": handshake refused")
				_, _, gerr := ln.Get(ctx, key)
				errIs(t, gerr, kv.ErrKeyNotFound, tc.name)
				equal(t, currentRev(t, ln), before, "%s: revision moved", tc.name)
				continue
			}
			noErr(t, err, tc.name)
			got, _, err := ln.Get(ctx, key)
			noErr(t, err, tc.name)
			equal(t, got.ModRevision, before+1, tc.name)
		}
	})
}

// currentRev is the cluster's revision, read linearizably through n.
func currentRev(t testing.TB, n *Node) int64 {
	t.Helper()
	_, rev, err := n.List(testContext(t), "tls/")
	noErr(t, err)
	return rev
}

// rawPut speaks the forwarding protocol as a follower would: the magic
// byte, then a gob rpcRequest proposing a Put, then the response.
func rawPut(dial func() (net.Conn, error), key string) error {
	c, err := dial()
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	w := bufio.NewWriter(c)
	if err := w.WriteByte(rpcMagic); err != nil {
		return err
	}
	txn := kv.Txn{Then: []kv.Op{kv.OpPut(key, []byte("x"))}}
	if err := gob.NewEncoder(w).Encode(&rpcRequest{Method: rpcPropose, Timeout: 5 * time.Second, Cmd: command{Op: opTxn, Txn: &txn}.encode()}); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return err
	}
	var resp rpcResponse
	if err := gob.NewDecoder(bufio.NewReader(c)).Decode(&resp); err != nil {
		return err
	}
	return resp.Err.err()
}
