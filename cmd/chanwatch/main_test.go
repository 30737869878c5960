package main

import (
	"bytes"
	"strings"
	"testing"
)

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestDemoEachBackend(t *testing.T) {
	for _, backend := range []string{"etcd", "mem", "raft"} {
		t.Run(backend, func(t *testing.T) {
			code, out, errOut := runCLI(t, "demo", "--backend="+backend, "--channels=24", "--nodes=3", "--session-ttl=1s")
			if code != 0 {
				t.Fatalf("demo --backend=%s exit %d\nstdout:\n%s\nstderr:\n%s", backend, code, out, errOut)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if last := lines[len(lines)-1]; !strings.HasPrefix(last, "invariants held") {
				t.Fatalf("last line %q does not report the invariants held\n%s", last, out)
			}
			for _, phase := range []string{"register", "crash node", "add a node", "drain node", "rolling restart"} {
				if !strings.Contains(out, phase) {
					t.Errorf("output lacks phase %q", phase)
				}
			}
			// The drain and the rolling restart report their moves' gaps.
			if n := strings.Count(out, "moves, gap p50"); n < 2 {
				t.Errorf("the phase table reports the gaps of %d phases, want the drain's and the rolling restart's:\n%s", n, out)
			}
		})
	}
}

func TestUsageErrorsExit2(t *testing.T) {
	for _, args := range [][]string{
		{"demo", "--no-such-flag"},
		{"demo", "--nodes", "-3"},
		{"demo", "--backend", "zookeeper"},
		{"status", "--endpoints", "not a url"},
		{"status", "--endpoints", "http://127.0.0.1:2379", "-o", "yaml"},
		{"drain", "--endpoints", "http://127.0.0.1:2379", "abc"},
		{"register", "--endpoints", "http://127.0.0.1:2379", "bad/name"},
		{"register", "--endpoints", "http://127.0.0.1:2379", "--collection", "abc", "ch"},
		{"register", "--endpoints", "http://127.0.0.1:2379", ".."},
		{"stauts"},
		{"status", "--exit-zero=maybe"},
		{"status"}, // no --endpoints
		{"coord", "--endpoints", "http://127.0.0.1:2379", "--log-format", "xml"},
		{"node", "--endpoints", "http://127.0.0.1:1", "--http", "", "--session-ttl", "10s", "--fence-margin", "10s"},
		{"node", "--endpoints", "http://127.0.0.1:1", "--http", "", "--session-ttl", "10s", "--fence-margin", "6s", "--keep-alive-interval", "4s"},
		{"node", "--endpoints", "http://127.0.0.1:1", "--http", "", "--max-attempt", "-1s"},
	} {
		code, _, errOut := runCLI(t, args...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2 (stderr %q)", args, code, errOut)
		}
		if strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.HasPrefix(errOut, "chanwatch: ") {
			t.Errorf("%v: stderr is not one 'chanwatch: ...' line: %q", args, errOut)
		}
		if strings.Contains(errOut, "goroutine ") || strings.Contains(errOut, "panic") {
			t.Errorf("%v: stack trace on stderr: %q", args, errOut)
		}
	}
}

func TestUnreachableEtcdExit1(t *testing.T) {
	// Port 1 on loopback: nothing listens there.
	code, _, errOut := runCLI(t, "status", "--endpoints", "http://127.0.0.1:1", "--dial-timeout", "300ms")
	if code != 1 {
		t.Fatalf("exit %d, want 1 (stderr %q)", code, errOut)
	}
	if !strings.Contains(errOut, "127.0.0.1:1") || !strings.Contains(errOut, "--endpoints") {
		t.Fatalf("error does not name the endpoint and what to do: %q", errOut)
	}
}
