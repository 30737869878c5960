package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/chanwatch/chanwatch/bench"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/etcdkv"
)

// globalFlags are shared by every command that talks to etcd.
type globalFlags struct {
	endpoints   string
	root        string
	logFormat   string
	logLevel    string
	dialTimeout time.Duration
	cacert      string
	cert        string
	key         string
	user        string
	password    string
	maxReqBytes int
}

func newRootCmd() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:           "chanwatch",
		Short:         "Channel ownership for Milvus-style clusters through etcd (MEP 7)",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err} })
	pf := root.PersistentFlags()
	pf.StringVar(&g.endpoints, "endpoints", "", "comma-separated etcd client URLs, e.g. http://127.0.0.1:2379")
	pf.StringVar(&g.root, "root", "chanwatch", "root path of chanwatch's keys in etcd")
	pf.StringVar(&g.logFormat, "log-format", "json", "log format: json or console")
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	pf.DurationVar(&g.dialTimeout, "dial-timeout", 5*time.Second, "timeout to reach etcd")
	pf.StringVar(&g.cacert, "cacert", "", "CA bundle to verify etcd's certificate")
	pf.StringVar(&g.cert, "cert", "", "client certificate for etcd")
	pf.StringVar(&g.key, "key", "", "client key for etcd")
	pf.StringVar(&g.user, "user", "", "etcd user name (password from --password or CHANWATCH_PASSWORD)")
	pf.StringVar(&g.password, "password", "", "etcd password")
	pf.IntVar(&g.maxReqBytes, "max-request-bytes", etcdkv.DefaultMaxRequestBytes,
		"etcd's --max-request-bytes: txns are packed, and channel specs refused at register, under it")

	root.AddCommand(
		newDemoCmd(g),
		newCoordCmd(g),
		newNodeCmd(g),
		newStatusCmd(g),
		newCheckCmd(g),
		newRegisterCmd(g),
		newDeregisterCmd(g),
		newDrainCmd(g),
		newPauseCmd(g, true),
		newPauseCmd(g, false),
		newUnquarantineCmd(g),
		bench.NewCommand(),
	)
	for _, c := range root.Commands() {
		c.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err} })
	}
	return root
}

// exactArgs is cobra.ExactArgs with a usage error.
func exactArgs(n int, names string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("expected %s, got %d argument(s)", names, len(args))
		}
		return nil
	}
}

func noArgs(_ *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	return nil
}

func (g *globalFlags) logger() (*zap.Logger, error) {
	var lvl zapcore.Level
	if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, usagef("--log-level %q: want debug, info, warn or error", g.logLevel)
	}
	var cfg zap.Config
	switch g.logFormat {
	case "json":
		cfg = zap.NewProductionConfig()
	case "console":
		cfg = zap.NewDevelopmentConfig()
		cfg.DisableStacktrace = true
	default:
		return nil, usagef("--log-format %q: want json or console", g.logFormat)
	}
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.OutputPaths = []string{"stderr"}
	return cfg.Build()
}

// parseEndpoints validates a comma-separated URL list.
func parseEndpoints(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, usagef("--endpoints is required (e.g. --endpoints http://127.0.0.1:2379)")
	}
	var eps []string
	for _, e := range strings.Split(s, ",") {
		e = strings.TrimSpace(e)
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Port() == "" {
			return nil, usagef("--endpoints: %q is not a URL like http://host:2379", e)
		}
		eps = append(eps, e)
	}
	return eps, nil
}

func (g *globalFlags) validateRoot() error {
	r := strings.Trim(g.root, "/")
	if r == "" {
		return usagef("--root must not be empty")
	}
	return nil
}

// clientConfig builds the etcd client config with TLS and auth.
func (g *globalFlags) clientConfig() (clientv3.Config, error) {
	eps, err := parseEndpoints(g.endpoints)
	if err != nil {
		return clientv3.Config{}, err
	}
	cfg := clientv3.Config{
		Endpoints:   eps,
		DialTimeout: g.dialTimeout,
		Logger:      zap.NewNop(),
		Username:    g.user,
		Password:    g.password,
	}
	if cfg.Username != "" && cfg.Password == "" {
		cfg.Password = os.Getenv("CHANWATCH_PASSWORD")
	}
	if g.cacert != "" || g.cert != "" || g.key != "" {
		tc, err := g.tlsConfig()
		if err != nil {
			return clientv3.Config{}, err
		}
		cfg.TLS = tc
	}
	return cfg, nil
}

func (g *globalFlags) tlsConfig() (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if (g.cert == "") != (g.key == "") {
		return nil, usagef("--cert and --key go together")
	}
	if g.cert != "" {
		pair, err := tls.LoadX509KeyPair(g.cert, g.key)
		if err != nil {
			return nil, usagef("--cert/--key: %v", err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	if g.cacert != "" {
		pem, err := os.ReadFile(g.cacert)
		if err != nil {
			return nil, usagef("--cacert: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, usagef("--cacert %s holds no PEM certificate", g.cacert)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

// connect opens an etcd client and a backend on --root, and checks that
// etcd answers, so an unreachable cluster is one clear line, not a hang.
func (g *globalFlags) connect(ctx context.Context, lg *zap.Logger) (kv.Backend, func(), error) {
	if err := g.validateRoot(); err != nil {
		return nil, nil, err
	}
	cfg, err := g.clientConfig()
	if err != nil {
		return nil, nil, err
	}
	cfg.Context = ctx
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to etcd at %s: %v (is etcd running? check --endpoints)", g.endpoints, err)
	}
	b, err := etcdkv.New(cli, g.root, etcdkv.WithLogger(lg), etcdkv.WithMaxRequestBytes(g.maxReqBytes))
	if err != nil {
		cli.Close()
		return nil, nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, g.dialTimeout)
	defer cancel()
	if _, _, err := b.Get(pctx, "session/node-id"); err != nil && !errors.Is(err, kv.ErrKeyNotFound) {
		b.Close()
		cli.Close()
		switch {
		case errors.Is(err, kv.ErrPermissionDenied):
			return nil, nil, fmt.Errorf("etcd at %s refused the credentials for root %q: %v (check --user/--password or --cert/--key)", g.endpoints, g.root, err)
		default:
			return nil, nil, fmt.Errorf("etcd at %s did not answer within %s: %v (is etcd running? check --endpoints)", g.endpoints, g.dialTimeout, err)
		}
	}
	return b, func() { b.Close(); cli.Close() }, nil
}
