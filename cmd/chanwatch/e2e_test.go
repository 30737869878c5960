package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/internal/etcdproc"
)

// TestEndToEndProcesses runs the CLI as an operator would: a real etcd
// process, one coord process, three node processes, channels registered with
// the CLI; then a node is SIGKILLed and another SIGTERMed.
func TestEndToEndProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries and runs processes: not run when testing.Short()")
	}
	const (
		ttl          = 2 * time.Second
		watchTimeout = 5 * time.Second
		channels     = 100
	)
	dir := t.TempDir()
	bin := filepath.Join(dir, "chanwatch")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cluster := etcdproc.NewForTest(t, 1)
	common := []string{"--endpoints", cluster.Endpoints()[0], "--root", "e2e/chanwatch"}

	procs := map[string]*exec.Cmd{}
	start := func(name string, args ...string) *exec.Cmd {
		f, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, append(args, common...)...)
		cmd.Stdout, cmd.Stderr = f, f
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		procs[name] = cmd
		t.Cleanup(func() {
			if cmd.ProcessState == nil {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
			}
			f.Close()
			if t.Failed() {
				b, _ := os.ReadFile(f.Name())
				t.Logf("--- %s log (tail) ---\n%s", name, tail(string(b), 3000))
			}
		})
		return cmd
	}
	cli := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, append(args, common...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("chanwatch %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	status := func() statusReport {
		t.Helper()
		var r statusReport
		if err := json.Unmarshal([]byte(cli("status", "-o", "json", "--exit-zero")), &r); err != nil {
			t.Fatalf("status -o json: %v", err)
		}
		return r
	}
	// converged: every channel Watched on a live serving node.
	converged := func(r statusReport) (bool, string) {
		live := map[int64]bool{}
		for _, n := range r.Nodes {
			live[n.ID] = n.State == "serving"
		}
		ok := 0
		for _, c := range r.Channels {
			if c.Registered && c.State == "Watched" && live[c.Node] {
				ok++
			}
		}
		return ok == channels && len(r.Channels) == channels, fmt.Sprintf("%d/%d Watched on live nodes, %d nodes", ok, channels, len(r.Nodes))
	}
	waitFor := func(what string, limit time.Duration, cond func(statusReport) (bool, string)) time.Duration {
		t.Helper()
		began := time.Now()
		last := ""
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for time.Since(began) < limit {
			ok, s := cond(status())
			if ok {
				return time.Since(began)
			}
			last = s
			<-tick.C // polling another process: no event to wait on
		}
		t.Fatalf("%s: not within %s (%s)", what, limit, last)
		return 0
	}

	start("coord", "coord", "--session-ttl", ttl.String(), "--node-ttl", ttl.String(), "--watch-timeout", watchTimeout.String(),
		"--release-timeout", watchTimeout.String(), "--http", "")
	for i := 1; i <= 3; i++ {
		start(fmt.Sprintf("node%d", i), "node", "--session-ttl", ttl.String(), "--http", "")
	}
	names := make([]string, channels)
	for i := range names {
		names[i] = fmt.Sprintf("by-dev-rootcoord-dml_%d_%dv0", i%16, 500+i)
	}
	cli(append([]string{"register", "--create", "--collection", "7"}, names...)...)
	waitFor("initial placement", time.Minute, converged)

	// SIGKILL a node: its channels must be Watched elsewhere within the
	// lease TTL plus the watch timeout.
	owners := map[int64]int{}
	for _, c := range status().Channels {
		owners[c.Node]++
	}
	victim := procs["node1"]
	if err := victim.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = victim.Wait()
	took := waitFor("failover after SIGKILL", ttl+watchTimeout, func(r statusReport) (bool, string) {
		ok, s := converged(r)
		return ok && len(r.Nodes) == 2, s
	})
	t.Logf("failover after SIGKILL: %s (bound: TTL %s + watch timeout %s)", took.Round(10*time.Millisecond), ttl, watchTimeout)

	// SIGTERM another node: it drains (the coordinator moves its channels
	// away, each released by the node) and only then exits.
	r := status()
	var drainID int64
	count := map[int64]int{}
	for _, c := range r.Channels {
		count[c.Node]++
	}
	// Which process is which node: ask each remaining node's log for its ID.
	drainee := procs["node2"]
	id, err := nodeIDFromLog(filepath.Join(dir, "node2.log"))
	if err != nil {
		t.Fatal(err)
	}
	drainID = id
	want := count[drainID]
	if want == 0 {
		t.Fatalf("node %d holds no channel before the drain: %v", drainID, count)
	}
	if err := drainee.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- drainee.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("drained node exited with %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("drained node did not exit within a minute")
	}
	released, stoppedAfter, err := drainLog(filepath.Join(dir, "node2.log"))
	if err != nil {
		t.Fatal(err)
	}
	if released < want || !stoppedAfter {
		t.Fatalf("node %d released %d of its %d channels before exiting (stop logged after releases: %v)", drainID, released, want, stoppedAfter)
	}
	waitFor("after drain", 2*ttl, func(r statusReport) (bool, string) {
		ok, s := converged(r)
		return ok && len(r.Nodes) == 1, s
	})
}

// nodeIDFromLog finds the node ID a node daemon logged.
func nodeIDFromLog(path string) (int64, error) {
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for ; time.Now().Before(deadline); <-tick.C {
		f, err := os.Open(path)
		if err != nil {
			return 0, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) != nil {
				continue
			}
			if id, ok := m["node"].(float64); ok && id > 0 {
				f.Close()
				return int64(id), nil
			}
		}
		f.Close()
	}
	return 0, fmt.Errorf("no node ID in %s", path)
}

// drainLog counts "released" lines and checks "node stopped" comes after them.
func drainLog(path string) (released int, stoppedAfter bool, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false, err
	}
	lastRelease, stopped := -1, -1
	for i, line := range strings.Split(string(b), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil {
			continue
		}
		switch m["msg"] {
		case "released":
			released++
			lastRelease = i
		case "node stopped":
			stopped = i
		}
	}
	return released, stopped > lastRelease && lastRelease >= 0, nil
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}
