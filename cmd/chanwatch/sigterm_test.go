package main

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/internal/etcdembed"
)

// daemon is a chanwatch process whose stderr is read line by line, each
// line stamped with the time it arrived.
type daemon struct {
	cmd   *exec.Cmd
	lines chan stampedLine
	done  chan struct{} // closed when stderr hits EOF
	all   []stampedLine
}

type stampedLine struct {
	at   time.Time
	text string
}

func startDaemon(t *testing.T, bin string, args ...string) *daemon {
	t.Helper()
	d := &daemon{cmd: exec.Command(bin, args...), lines: make(chan stampedLine, 1024), done: make(chan struct{})}
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(d.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			d.lines <- stampedLine{at: time.Now(), text: sc.Text()}
		}
	}()
	t.Cleanup(func() {
		_ = d.cmd.Process.Kill()
		<-d.done
		_ = d.cmd.Wait()
		if t.Failed() {
			for _, l := range d.all {
				t.Logf("%s: %s", args[0], l.text)
			}
		}
	})
	return d
}

// sigterm signals d, waits for it to exit, and returns the time from its
// last stderr line to its exit.
func (d *daemon) sigterm(t *testing.T, within time.Duration) time.Duration {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.done:
	case <-time.After(within):
		t.Fatalf("%s: no exit within %s of SIGTERM", d.cmd.Args[1], within)
	}
	err := d.cmd.Wait()
	exited := time.Now()
	close(d.lines)
	for l := range d.lines {
		d.all = append(d.all, l)
	}
	if err != nil {
		t.Fatalf("%s exited with %v", d.cmd.Args[1], err)
	}
	if len(d.all) == 0 {
		t.Fatalf("%s logged nothing", d.cmd.Args[1])
	}
	for _, l := range d.all {
		var m map[string]any
		if json.Unmarshal([]byte(l.text), &m) != nil || m["msg"] == nil {
			t.Errorf("%s: stderr line that is not the CLI's own log: %s", d.cmd.Args[1], l.text)
		}
	}
	return exited.Sub(d.all[len(d.all)-1].at)
}

func waitReady(t *testing.T, addr string) {
	t.Helper()
	// Another process: no event to wait on, so poll its readiness endpoint
	// on a ticker until the deadline.
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if resp, err := http.Get("http://" + addr + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-deadline.C:
			t.Fatalf("%s never ready", addr)
		case <-tick.C:
		}
	}
}

// TestSIGTERMExitsPromptlyAndQuietly: a SIGTERMed node (drained) and
// coordinator (stepping down) exit 0 soon after their last log line, and
// nothing but their own JSON log lines reaches stderr (no etcd client
// noise at shutdown).
func TestSIGTERMExitsPromptlyAndQuietly(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs processes: not run when testing.Short()")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "chanwatch")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	srv := etcdembed.NewForTest(t)
	common := []string{"--endpoints", srv.Endpoints()[0], "--root", "sigterm-test", "--log-format", "json"}
	coordAddr, nodeAddr := freeAddr(t), freeAddr(t)
	coord := startDaemon(t, bin, append([]string{"coord", "--http", coordAddr, "--session-ttl", "2s", "--node-ttl", "2s"}, common...)...)
	waitReady(t, coordAddr)
	node := startDaemon(t, bin, append([]string{"node", "--http", nodeAddr, "--session-ttl", "2s"}, common...)...)
	waitReady(t, nodeAddr)
	if out, err := exec.Command(bin, append([]string{"register", "--create", "--collection", "1", "sigterm-ch-0"}, common...)...).CombinedOutput(); err != nil {
		t.Fatalf("register: %v\n%s", err, out)
	}
	const prompt = 2 * time.Second
	if d := node.sigterm(t, 30*time.Second); d > prompt {
		t.Errorf("node exited %s after its last line, want < %s", d, prompt)
	}
	if d := coord.sigterm(t, 30*time.Second); d > prompt {
		t.Errorf("coordinator exited %s after its last line, want < %s", d, prompt)
	}
	if last := coord.all[len(coord.all)-1].text; !json.Valid([]byte(last)) || !containsMsg(last, "coordinator stopped") {
		t.Errorf("coordinator's last line %s: want \"coordinator stopped\"", last)
	}
}

func containsMsg(line, msg string) bool {
	var m map[string]any
	return json.Unmarshal([]byte(line), &m) == nil && m["msg"] == msg
}
