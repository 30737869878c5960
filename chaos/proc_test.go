package chaos

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	binOnce sync.Once
	binDir  string
	binErr  error

	cliOnce sync.Once
	cliErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// chaosnodeBin builds chaos/internal/chaosnode once per test binary.
func chaosnodeBin(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "chanwatch-chaosnode-")
		if binErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", filepath.Join(binDir, "chaosnode"), "./internal/chaosnode").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build chaosnode: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return filepath.Join(binDir, "chaosnode")
}

// chanwatchBin builds the chanwatch CLI (cmd/chanwatch) once per test
// binary, next to chaosnode.
func chanwatchBin(t testing.TB) string {
	t.Helper()
	dir := filepath.Dir(chaosnodeBin(t))
	cliOnce.Do(func() {
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, "chanwatch"), "../cmd/chanwatch").CombinedOutput()
		if err != nil {
			cliErr = fmt.Errorf("go build chanwatch: %v\n%s", err, out)
		}
	})
	if cliErr != nil {
		t.Fatal(cliErr)
	}
	return filepath.Join(dir, "chanwatch")
}

// proc is a child process: a chaosnode or a chanwatch daemon.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func startProc(t testing.TB, name string, args ...string) *proc {
	t.Helper()
	return startExe(t, chaosnodeBin(t), name, append([]string{"--name", name}, args...)...)
}

// startExe runs bin with args, its output in a log file of the test's; the
// test's end stops it (SIGCONT, SIGTERM, SIGKILL after 10s).
func startExe(t testing.TB, bin, name string, args ...string) *proc {
	t.Helper()
	log := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(log)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// The child dies with the test binary, so a crashed test leaves no node.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{name: name, cmd: cmd, log: log, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); _ = f.Close(); close(p.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *proc) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("%s: signal %v: %v", p.name, sig, err)
	}
}

// serveLedger exposes the ledger to chaosnode processes over HTTP: POST
// ?kind=start|effect|end&node=&id=&ch=&token=. A rejected effect answers 409.
func serveLedger(t testing.TB, l *ledger) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		q := req.URL.Query()
		id, _ := strconv.ParseInt(q.Get("id"), 10, 64)
		token, _ := strconv.ParseInt(q.Get("token"), 10, 64)
		node, ch := q.Get("node"), q.Get("ch")
		switch q.Get("kind") {
		case "start":
			l.start(node, id, ch, token)
		case "effect":
			if !l.effect(node, ch, token) {
				w.WriteHeader(http.StatusConflict)
			}
		case "end":
			l.end(node, ch)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}
