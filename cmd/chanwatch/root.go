package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"regexp"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
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
		Use:   "chanwatch",
		Short: "Channel ownership for Milvus-style clusters through etcd (MEP 7)",
		Long: "Channel ownership for Milvus-style clusters through etcd (MEP 7).\n\n" +
			"Every global flag can also come from the environment: CHANWATCH_ and the flag name in\n" +
			"upper case with '-' as '_' (CHANWATCH_ENDPOINTS, CHANWATCH_ROOT, CHANWATCH_CACERT, ...).\n" +
			"A flag on the command line wins over the environment.",
		Version:           versionString(),
		SilenceUsage:      true,
		SilenceErrors:     true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error { return flagsFromEnv(cmd.Root().PersistentFlags()) },
	}
	root.SetVersionTemplate("chanwatch {{.Version}}\n")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{flagError(err)} })
	pf := root.PersistentFlags()
	pf.StringVar(&g.endpoints, "endpoints", "", "comma-separated etcd client URLs, e.g. http://127.0.0.1:2379")
	pf.StringVar(&g.root, "root", "chanwatch", "root path of chanwatch's keys in etcd")
	pf.StringVar(&g.logFormat, "log-format", "", "log format: json or console (default: console when stderr is a terminal, json otherwise)")
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	pf.DurationVar(&g.dialTimeout, "dial-timeout", 5*time.Second, "timeout to reach etcd")
	pf.StringVar(&g.cacert, "cacert", "", "CA bundle to verify etcd's certificate")
	pf.StringVar(&g.cert, "cert", "", "client certificate for etcd")
	pf.StringVar(&g.key, "key", "", "client key for etcd")
	pf.StringVar(&g.user, "user", "", "etcd user name")
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
		newUndrainCmd(g),
		newMayStopCmd(g),
		newPauseCmd(g, true),
		newPauseCmd(g, false),
		newUnquarantineCmd(g),
		newVersionCmd(),
		bench.NewCommand(),
	)
	for _, c := range root.Commands() {
		c.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{flagError(err)} })
	}
	return root
}

// envName is the environment variable a global flag can come from.
func envName(flag string) string {
	return "CHANWATCH_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// flagsFromEnv sets every global flag not given on the command line from
// its CHANWATCH_* variable, as etcdctl reads ETCDCTL_*.
func flagsFromEnv(fs *pflag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		v, ok := os.LookupEnv(envName(f.Name))
		if err != nil || f.Changed || !ok {
			return
		}
		if serr := f.Value.Set(v); serr != nil {
			err = usagef("%s=%q: %v", envName(f.Name), v, flagError(serr))
		}
	})
	return err
}

var (
	flagParseRe = regexp.MustCompile(`^invalid argument "(.*)" for "(.*)" flag: (.*)$`)
	// strconv's and time's words, as a sentence an operator reads.
	valueErrs = []struct{ match, say string }{
		{"strconv.ParseInt", "is not a whole number"},
		{"strconv.ParseUint", "is not a whole number >= 0"},
		{"strconv.ParseFloat", "is not a number"},
		{"strconv.ParseBool", "is not true or false"},
		{"time: ", "is not a duration like 500ms, 10s or 5m"},
	}
)

// flagError rewrites pflag's parse errors ("invalid argument ... strconv.
// ParseInt: parsing ...: invalid syntax") into a sentence.
func flagError(err error) error {
	m := flagParseRe.FindStringSubmatch(err.Error())
	if m == nil {
		return err
	}
	for _, v := range valueErrs {
		if strings.Contains(m[3], v.match) {
			say := v.say
			if strings.Contains(m[3], "out of range") {
				say = "is out of range"
			}
			return fmt.Errorf("%s: %q %s", m[2], m[1], say)
		}
	}
	return fmt.Errorf("%s: %q: %s", m[2], m[1], m[3])
}

// versionString is the module version and VCS commit the binary was built from.
func versionString() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown version)"
	}
	v, commit, dirty := bi.Main.Version, "", ""
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			commit = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	if commit == "" {
		commit = "unknown"
	}
	return fmt.Sprintf("%s (commit %s%s, %s)", v, commit, dirty, bi.GoVersion)
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the module version and the VCS commit this binary was built from",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "chanwatch %s\n", versionString())
			return nil
		},
	}
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
	format := g.logFormat
	if format == "" {
		format = "json"
		if isTerminal(os.Stderr) {
			format = "console"
		}
	}
	switch format {
	case "json":
		cfg = zap.NewProductionConfig()
	case "console":
		cfg = zap.NewDevelopmentConfig()
		cfg.DisableStacktrace = true
	default:
		return nil, usagef("--log-format %q: want json or console", g.logFormat)
	}
	cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
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
	// etcd may be starting (a guide pasted in one go): retry an unreachable
	// endpoint until the dial timeout, as etcdctl waits for its dial.
	err = probe(pctx, b)
	if err != nil && !errors.Is(err, kv.ErrKeyNotFound) {
		b.Close()
		cli.Close()
		switch {
		case errors.Is(err, kv.ErrPermissionDenied):
			return nil, nil, fmt.Errorf("etcd at %s refused the credentials for root %q: %v (check --user/--password or --cert/--key)", g.endpoints, g.root, err)
		default:
			if cause := diagnose(ctx, cfg, g.dialTimeout); cause != "" {
				return nil, nil, fmt.Errorf("etcd at %s: %s", g.endpoints, cause)
			}
			return nil, nil, fmt.Errorf("etcd at %s did not answer within %s: %v (is etcd running? check --endpoints)", g.endpoints, g.dialTimeout, err)
		}
	}
	return b, func() { b.Close(); cli.Close() }, nil
}

// probe reads one key, retrying while the backend is unreachable, until ctx
// ends; it returns the last error.
func probe(ctx context.Context, b kv.Backend) error {
	for {
		_, _, err := b.Get(ctx, "session/node-id")
		if err == nil || !errors.Is(err, kv.ErrUnavailable) || ctx.Err() != nil {
			return err
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

// diagnose finds why etcd did not answer, for the first endpoint it can
// say something about: the gRPC client only reports a deadline, which hides
// a refused connection or TLS spoken to a plaintext port (or the reverse).
func diagnose(ctx context.Context, cfg clientv3.Config, timeout time.Duration) string {
	for _, ep := range cfg.Endpoints {
		u, err := url.Parse(ep)
		if err != nil {
			continue
		}
		d := net.Dialer{Timeout: timeout}
		conn, err := d.DialContext(ctx, "tcp", u.Host)
		if err != nil {
			return fmt.Sprintf("cannot connect to %s: %v (is etcd running there? check --endpoints)", u.Host, unwrapNet(err))
		}
		useTLS := u.Scheme == "https" || cfg.TLS != nil
		if !useTLS {
			// Plaintext: a TLS server answers an HTTP/2 preface with a TLS alert.
			_ = conn.SetDeadline(time.Now().Add(timeout))
			_, _ = conn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
			buf := make([]byte, 1)
			n, _ := conn.Read(buf)
			conn.Close()
			if n == 1 && buf[0] == 0x15 { // TLS record type: alert
				return fmt.Sprintf("%s speaks TLS but the endpoint is plaintext: use https:// (and --cacert)", u.Host)
			}
			continue
		}
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.TLS != nil {
			tc = cfg.TLS.Clone()
		}
		tc.ServerName = u.Hostname()
		tconn := tls.Client(conn, tc)
		hctx, cancel := context.WithTimeout(ctx, timeout)
		err = tconn.HandshakeContext(hctx)
		cancel()
		tconn.Close()
		switch {
		case err != nil && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) ||
			strings.Contains(err.Error(), "first record does not look like a TLS handshake")):
			// A plaintext etcd hangs up on a TLS hello, or answers in HTTP.
			return fmt.Sprintf("%s does not speak TLS (a plaintext server?): use http://, or check the server's --cert-file", u.Host)
		case err != nil:
			return fmt.Sprintf("TLS handshake with %s failed: %v (check --cacert, --cert, --key)", u.Host, err)
		}
	}
	return ""
}

// unwrapNet keeps the syscall's words ("connection refused") and drops the
// dial's repetition of the address.
func unwrapNet(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}
