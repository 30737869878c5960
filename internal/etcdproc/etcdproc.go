package etcdproc

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// DefaultMaxTxnOps is etcd's default --max-txn-ops.
const DefaultMaxTxnOps = 128

// bindAttempts bounds the retries when another process takes a picked port
// before a member binds it.
const bindAttempts = 5

// Errors of the member operations.
var (
	// ErrNotRunning: the member is not running (killed or terminated).
	// ErrRunning: Restart on a member that still runs. ErrClosed: the
	// cluster was closed.
	ErrNotRunning = errors.New("etcdproc: member not running")
	ErrRunning    = errors.New("etcdproc: member already running")
	ErrClosed     = errors.New("etcdproc: cluster closed")
)

type config struct {
	binary        string
	logger        *zap.Logger
	heartbeat     time.Duration
	election      time.Duration
	unsafeNoFsync bool
	maxTxnOps     int
	quotaBytes    int64
	startTimeout  time.Duration
	args          []string
}

func defaultConfig() config {
	return config{
		logger:       zap.NewNop(),
		heartbeat:    100 * time.Millisecond,
		election:     1000 * time.Millisecond,
		maxTxnOps:    DefaultMaxTxnOps,
		startTimeout: 30 * time.Second,
	}
}

func (c *config) validate() error {
	switch {
	case c.logger == nil:
		return errors.New("etcdproc: nil logger")
	case c.heartbeat < time.Millisecond || c.heartbeat%time.Millisecond != 0:
		return fmt.Errorf("etcdproc: heartbeat %v must be a positive whole number of milliseconds", c.heartbeat)
	case c.election%time.Millisecond != 0 || c.election < 5*c.heartbeat:
		return fmt.Errorf("etcdproc: election timeout %v must be whole milliseconds and at least 5 heartbeats (%v)", c.election, 5*c.heartbeat)
	case c.maxTxnOps <= 0:
		return fmt.Errorf("etcdproc: max txn ops %d must be > 0", c.maxTxnOps)
	case c.quotaBytes < 0:
		return fmt.Errorf("etcdproc: negative quota %d", c.quotaBytes)
	case c.startTimeout <= 0:
		return fmt.Errorf("etcdproc: start timeout %v must be > 0", c.startTimeout)
	}
	return nil
}

// Option configures Start.
type Option func(*config)

// WithBinary runs the etcd binary at path (default: Binary()).
func WithBinary(path string) Option { return func(c *config) { c.binary = path } }

// WithLogger logs member starts, kills and restarts (default zap.NewNop()).
// The members' own logs go to their log files (LogPath), not here.
func WithLogger(lg *zap.Logger) Option { return func(c *config) { c.logger = lg } }

// WithTimers sets --heartbeat-interval and --election-timeout (defaults
// 100ms and 1s, etcd's). Whole milliseconds, election >= 5*heartbeat. They
// fix the minimum lease TTL: ceil(1.5*election) in whole seconds.
func WithTimers(heartbeat, election time.Duration) Option {
	return func(c *config) { c.heartbeat, c.election = heartbeat, election }
}

// WithFastTimers sets a 50ms heartbeat and a 500ms election timeout: leader
// loss is noticed sooner and the minimum lease TTL is 1s.
func WithFastTimers() Option { return WithTimers(50*time.Millisecond, 500*time.Millisecond) }

// WithUnsafeNoFsync passes --unsafe-no-fsync: faster on slow disks, and a
// crash of the machine (not of the process) can lose acknowledged writes.
func WithUnsafeNoFsync(on bool) Option { return func(c *config) { c.unsafeNoFsync = on } }

// WithMaxTxnOps sets --max-txn-ops (default 128). Tell the client-side
// backend the same value.
func WithMaxTxnOps(n int) Option { return func(c *config) { c.maxTxnOps = n } }

// WithQuotaBytes sets --quota-backend-bytes (0: etcd's default, 2GiB).
func WithQuotaBytes(n int64) Option { return func(c *config) { c.quotaBytes = n } }

// WithStartTimeout bounds how long Start waits for every member to be
// healthy, and Restart for the member to accept connections (default 30s).
func WithStartTimeout(d time.Duration) Option { return func(c *config) { c.startTimeout = d } }

// WithArgs appends raw etcd flags (e.g. "--log-level=warn",
// "--auto-compaction-retention=1000"). They come last, so they override the
// package's own flags; they must not change names, URLs or data dirs.
func WithArgs(args ...string) Option {
	return func(c *config) { c.args = append(c.args, args...) }
}

// Cluster is a set of etcd member processes on loopback. Its methods are
// safe for concurrent use.
type Cluster struct {
	cfg     config
	dir     string
	members []*member

	mu     sync.Mutex
	closed bool
}

type member struct {
	name      string
	dataDir   string
	logPath   string
	clientURL string
	peerURL   string
	args      []string

	// Guarded by Cluster.mu.
	proc *process
}

// process is one run of a member's binary.
type process struct {
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{} // closed once the process has exited and been reaped
	err  error         // Wait's result, readable after done
}

// Start launches an n-member cluster with its state under dir (member i in
// dir/m<i>, its output in dir/m<i>.log) and returns once every member is
// healthy. On error every process it started is killed. dir is the
// caller's: Close leaves it in place.
func Start(dir string, n int, opts ...Option) (*Cluster, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if dir == "" {
		return nil, errors.New("etcdproc: empty dir")
	}
	if n < 1 {
		return nil, fmt.Errorf("etcdproc: %d members, want >= 1", n)
	}
	if cfg.binary == "" {
		bin, err := Binary()
		if err != nil {
			return nil, err
		}
		cfg.binary = bin
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("etcdproc: %w", err)
	}
	var lastErr error
	for attempt := range bindAttempts {
		c, err := start(dir, n, cfg)
		if err == nil {
			return c, nil
		}
		lastErr = err
		if !errors.Is(err, errAddrInUse) {
			return nil, err
		}
		cfg.logger.Info("etcdproc: port taken, retrying", zap.Int("attempt", attempt+1), zap.Error(err))
	}
	return nil, fmt.Errorf("etcdproc: no free ports after %d attempts: %w", bindAttempts, lastErr)
}

var errAddrInUse = errors.New("address already in use")

func start(dir string, n int, cfg config) (*Cluster, error) {
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	token := make([]byte, 6)
	_, _ = rand.Read(token)
	c := &Cluster{cfg: cfg, dir: dir}
	var initial []string
	for i := range n {
		m := &member{
			name:      fmt.Sprintf("m%d", i),
			dataDir:   filepath.Join(dir, fmt.Sprintf("m%d", i)),
			logPath:   filepath.Join(dir, fmt.Sprintf("m%d.log", i)),
			clientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[2*i]),
			peerURL:   fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]),
		}
		// A retry after losing a port race starts over with fresh dirs.
		if err := os.RemoveAll(m.dataDir); err != nil {
			return nil, fmt.Errorf("etcdproc: %w", err)
		}
		c.members = append(c.members, m)
		initial = append(initial, m.name+"="+m.peerURL)
	}
	for _, m := range c.members {
		m.args = []string{
			"--name=" + m.name,
			"--data-dir=" + m.dataDir,
			"--listen-client-urls=" + m.clientURL,
			"--advertise-client-urls=" + m.clientURL,
			"--listen-peer-urls=" + m.peerURL,
			"--initial-advertise-peer-urls=" + m.peerURL,
			"--initial-cluster=" + strings.Join(initial, ","),
			"--initial-cluster-state=new",
			"--initial-cluster-token=etcdproc-" + hex.EncodeToString(token),
			"--heartbeat-interval=" + strconv.FormatInt(cfg.heartbeat.Milliseconds(), 10),
			"--election-timeout=" + strconv.FormatInt(cfg.election.Milliseconds(), 10),
			"--max-txn-ops=" + strconv.Itoa(cfg.maxTxnOps),
			"--quota-backend-bytes=" + strconv.FormatInt(cfg.quotaBytes, 10),
			"--unsafe-no-fsync=" + strconv.FormatBool(cfg.unsafeNoFsync),
			"--logger=zap",
			"--log-outputs=stderr",
		}
		m.args = append(m.args, cfg.args...)
	}
	c.mu.Lock()
	for _, m := range c.members {
		if err := c.launch(m); err != nil {
			c.mu.Unlock()
			_ = c.Close()
			return nil, err
		}
	}
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), cfg.startTimeout)
	defer cancel()
	for i := range c.members {
		if err := c.WaitHealthy(ctx, i); err != nil {
			_ = c.Close()
			for _, m := range c.members {
				if strings.Contains(tail(m.logPath, 64<<10), "address already in use") {
					return nil, fmt.Errorf("etcdproc: member %s: %w", m.name, errAddrInUse)
				}
			}
			return nil, fmt.Errorf("etcdproc: cluster not healthy after %v: %w", cfg.startTimeout, err)
		}
	}
	cfg.logger.Info("etcdproc: cluster started", zap.Int("members", n), zap.Strings("endpoints", c.Endpoints()))
	return c, nil
}

// launch starts m's process. Caller holds c.mu.
func (c *Cluster) launch(m *member) error {
	f, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("etcdproc: %w", err)
	}
	cmd := exec.Command(c.cfg.binary, m.args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Die with us: a test that crashes must not leave members behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("etcdproc: start %s: %w", m.name, err)
	}
	p := &process{cmd: cmd, log: f, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	m.proc = p
	c.cfg.logger.Info("etcdproc: member started", zap.String("member", m.name), zap.Int("pid", cmd.Process.Pid))
	return nil
}

// freePorts asks the kernel for n distinct free loopback ports. They are
// released before etcd binds them, so a caller must handle losing a race.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("etcdproc: pick port: %w", err)
		}
		defer l.Close() // held until all are picked, so the ports differ
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func (c *Cluster) member(i int) (*member, error) {
	if i < 0 || i >= len(c.members) {
		return nil, fmt.Errorf("etcdproc: no member %d (cluster of %d)", i, len(c.members))
	}
	return c.members[i], nil
}

// Len returns the number of members.
func (c *Cluster) Len() int { return len(c.members) }

// Endpoints returns every member's client URL, in member order.
func (c *Cluster) Endpoints() []string {
	eps := make([]string, len(c.members))
	for i, m := range c.members {
		eps[i] = m.clientURL
	}
	return eps
}

// Endpoint returns member i's client URL ("" for a bad i).
func (c *Cluster) Endpoint(i int) string {
	m, err := c.member(i)
	if err != nil {
		return ""
	}
	return m.clientURL
}

// PeerURL returns member i's peer URL ("" for a bad i).
func (c *Cluster) PeerURL(i int) string {
	m, err := c.member(i)
	if err != nil {
		return ""
	}
	return m.peerURL
}

// LogPath returns the file member i's stdout and stderr go to (appended
// across restarts).
func (c *Cluster) LogPath(i int) string {
	m, err := c.member(i)
	if err != nil {
		return ""
	}
	return m.logPath
}

// MaxTxnOps returns the members' --max-txn-ops.
func (c *Cluster) MaxTxnOps() int { return c.cfg.maxTxnOps }

// MinLeaseTTL returns the smallest lease TTL the members grant.
func (c *Cluster) MinLeaseTTL() time.Duration {
	ticks := c.cfg.election / c.cfg.heartbeat
	ttl := time.Duration((3*ticks)/2) * c.cfg.heartbeat
	return time.Duration(math.Ceil(ttl.Seconds())) * time.Second
}

// Pid returns member i's process ID, or 0 when it is not running.
func (c *Cluster) Pid(i int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, err := c.member(i)
	if err != nil || !m.running() {
		return 0
	}
	return m.proc.cmd.Process.Pid
}

// Running reports whether member i's process is alive (a SIGSTOPped
// member is alive).
func (c *Cluster) Running(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, err := c.member(i)
	return err == nil && m.running()
}

func (m *member) running() bool {
	if m.proc == nil {
		return false
	}
	select {
	case <-m.proc.done:
		return false
	default:
		return true
	}
}

// signal sends sig to member i. Caller holds c.mu.
func (c *Cluster) signal(i int, sig syscall.Signal) (*process, error) {
	if c.closed {
		return nil, ErrClosed
	}
	m, err := c.member(i)
	if err != nil {
		return nil, err
	}
	if !m.running() {
		return nil, fmt.Errorf("%w: %s", ErrNotRunning, m.name)
	}
	if err := m.proc.cmd.Process.Signal(sig); err != nil {
		return nil, fmt.Errorf("etcdproc: signal %v to %s: %w", sig, m.name, err)
	}
	c.cfg.logger.Info("etcdproc: signalled member", zap.String("member", m.name), zap.Stringer("signal", sig))
	return m.proc, nil
}

// Kill sends SIGKILL to member i (a crash: nothing is flushed beyond what
// etcd already synced) and returns once the process has exited. Its data
// dir and ports stay, for Restart. Killing a stopped (SIGSTOP) member works.
// ErrNotRunning when it is not running.
func (c *Cluster) Kill(i int) error {
	c.mu.Lock()
	p, err := c.signal(i, syscall.SIGKILL)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	<-p.done
	return nil
}

// Terminate sends SIGTERM to member i (a clean shutdown: a leader hands
// leadership over first) and waits for it to exit, killing it after
// timeout. ErrNotRunning when it is not running.
func (c *Cluster) Terminate(i int, timeout time.Duration) error {
	c.mu.Lock()
	p, err := c.signal(i, syscall.SIGTERM)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	return fmt.Errorf("etcdproc: member %d did not exit within %v of SIGTERM; killed it", i, timeout)
}

// Stop freezes member i with SIGSTOP: the process stays, holds its ports
// and answers nothing, as a long GC pause or a hung VM would; the others
// elect a new leader if it led. Cont resumes it.
func (c *Cluster) Stop(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, err := c.signal(i, syscall.SIGSTOP)
	if err != nil {
		return err
	}
	// The stop takes effect asynchronously (every thread must reach it):
	// return once the kernel reports the process stopped, so that nothing
	// it answers afterwards was served after Stop returned.
	waitStopped(p.cmd.Process.Pid, 5*time.Second)
	return nil
}

// waitStopped polls /proc/<pid>/task/*/stat until every thread's state is
// "T" (stopped) or d passes; where /proc does not exist it returns at once.
func waitStopped(pid int, d time.Duration) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		tasks, err := os.ReadDir(dir)
		if err != nil {
			return
		}
		stopped := true
		for _, t := range tasks {
			b, err := os.ReadFile(dir + "/" + t.Name() + "/stat")
			if err != nil {
				continue // the thread exited
			}
			// The state follows the command name, which is in parentheses.
			if i := bytes.LastIndexByte(b, ')'); i < 0 || i+2 >= len(b) || b[i+2] != 'T' {
				stopped = false
				break
			}
		}
		if stopped {
			return
		}
		t := time.NewTimer(time.Millisecond)
		<-t.C
	}
}

// Cont resumes a member frozen by Stop (SIGCONT). Sending it to a running
// member does nothing.
func (c *Cluster) Cont(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.signal(i, syscall.SIGCONT)
	return err
}

// Restart starts member i again from its data dir, on its ports, and
// returns once it accepts client connections. It serves requests only once
// it has caught up with a quorum: use WaitHealthy for that. ErrRunning when
// it still runs.
func (c *Cluster) Restart(i int) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	m, err := c.member(i)
	if err != nil {
		c.mu.Unlock()
		return err
	}
	if m.running() {
		c.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrRunning, m.name)
	}
	err = c.launch(m)
	p := m.proc
	c.mu.Unlock()
	if err != nil {
		return err
	}
	host := strings.TrimPrefix(m.clientURL, "http://")
	deadline := time.Now().Add(c.cfg.startTimeout)
	for {
		conn, derr := net.DialTimeout("tcp", host, time.Second)
		if derr == nil {
			conn.Close()
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("etcdproc: member %s exited on restart (%v): %s", m.name, p.err, tail(m.logPath, 2048))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcdproc: member %s not listening %v after restart: %w", m.name, c.cfg.startTimeout, derr)
		}
	}
}

// Healthy reports whether member i answers /health with true: it runs, has
// a leader and serves (etcd's own health check, with a linearizable read).
func (c *Cluster) Healthy(ctx context.Context, i int) bool {
	m, err := c.member(i)
	if err != nil {
		return false
	}
	hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(hctx, http.MethodGet, m.clientURL+"/health", nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var h struct {
		Health string `json:"health"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4096)).Decode(&h); err != nil {
		return false
	}
	return resp.StatusCode == http.StatusOK && h.Health == "true"
}

// WaitHealthy waits until member i is Healthy. It fails with ctx's error,
// or at once with ErrNotRunning (and the end of its log) if the process
// exits.
func (c *Cluster) WaitHealthy(ctx context.Context, i int) error {
	m, err := c.member(i)
	if err != nil {
		return err
	}
	for {
		c.mu.Lock()
		p := m.proc
		c.mu.Unlock()
		if p == nil {
			return fmt.Errorf("%w: %s", ErrNotRunning, m.name)
		}
		select {
		case <-p.done:
			return fmt.Errorf("%w: %s exited (%v): %s", ErrNotRunning, m.name, p.err, tail(m.logPath, 2048))
		default:
		}
		if c.Healthy(ctx, i) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcdproc: member %s not healthy: %w", m.name, ctx.Err())
		case <-p.done:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Leader returns the index of the member that leads, as the running
// members report it; an error when none answers or none knows a leader.
func (c *Cluster) Leader(ctx context.Context) (int, error) {
	var errs []error
	byID := map[uint64]int{}
	var leader uint64
	for i, m := range c.members {
		if !c.Running(i) {
			continue
		}
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.clientURL}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := cli.Status(sctx, m.clientURL)
		cancel()
		cli.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", m.name, err))
			continue
		}
		byID[st.Header.MemberId] = i
		if st.Leader != 0 {
			leader = st.Leader
		}
	}
	if i, ok := byID[leader]; ok && leader != 0 {
		return i, nil
	}
	errs = append(errs, errors.New("no running member leads"))
	return -1, fmt.Errorf("etcdproc: no leader: %w", errors.Join(errs...))
}

// Client returns a client on every member's endpoint (5s dial timeout, no
// logging); the caller closes it.
func (c *Cluster) Client() (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, fmt.Errorf("etcdproc: client: %w", err)
	}
	return cli, nil
}

// Close kills every member (resuming stopped ones is not needed: SIGKILL
// ends them) and waits for them to exit. The data dirs stay. Idempotent.
func (c *Cluster) Close() error {
	c.mu.Lock()
	c.closed = true
	var procs []*process
	for _, m := range c.members {
		if m.running() {
			_ = m.proc.cmd.Process.Signal(syscall.SIGKILL)
			procs = append(procs, m.proc)
		}
	}
	c.mu.Unlock()
	for _, p := range procs {
		<-p.done
	}
	return nil
}

// TB is the part of testing.TB that NewForTest uses. It is an interface of
// its own so that binaries importing this package do not link testing.
type TB interface {
	Helper()
	TempDir() string
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// NewForTest starts an n-member cluster in t.TempDir() with fast timers and
// fsync off, closes it when the test ends, and fails the test if it cannot
// start (including when no binary can be found or built). opts apply after
// those defaults.
func NewForTest(t TB, n int, opts ...Option) *Cluster {
	t.Helper()
	all := append([]Option{WithFastTimers(), WithUnsafeNoFsync(true)}, opts...)
	c, err := Start(t.TempDir(), n, all...)
	if err != nil {
		t.Fatalf("etcdproc: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// tail returns the last n bytes of the file at path (for error messages).
func tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(st.Size()-n, 0)
	b := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
		return ""
	}
	return string(b)
}
