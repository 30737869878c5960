package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv/memkv"
	"github.com/chanwatch/chanwatch/meta"
)

func TestRegisterRefusesEmptyRootWithoutCreate(t *testing.T) {
	s := newTestStore(t)
	code, _, errOut := s.cli(t, "register", "--collection", "1", "ch-0")
	if code != 1 || !strings.Contains(errOut, "holds no chanwatch data") || !strings.Contains(errOut, "--create") {
		t.Fatalf("exit %d, stderr %q: want a refusal naming --create", code, errOut)
	}
	if s.get(t, meta.RegistryKey("ch-0")) {
		t.Fatal("the refused register wrote its key")
	}
	code, out, errOut := s.cli(t, "register", "--create", "--collection", "1", "ch-0")
	if code != 0 || !strings.Contains(out, "registered 1 channel(s)") {
		t.Fatalf("--create: exit %d\n%s%s", code, out, errOut)
	}
	if !strings.Contains(errOut, "warning: no coordinator leads") {
		t.Errorf("no warning that no coordinator leads: %q", errOut)
	}
	for _, args := range [][]string{{"pause"}, {"resume"}, {"deregister", "ch-0"}} {
		if code, _, errOut := s.cli(t, args...); code != 0 || !strings.Contains(errOut, "warning: no coordinator leads") {
			t.Errorf("%v: exit %d, stderr %q: want success with a warning", args, code, errOut)
		}
	}
}

func TestRegisterAllOrNothing(t *testing.T) {
	s := newTestStore(t)
	s.cli(t, "register", "--create", "--collection", "1", "ch-1")
	code, out, errOut := s.cli(t, "register", "--collection", "1", "ch-0", "ch-1", "ch-2")
	if code != 1 || !strings.Contains(errOut, "already registered: ch-1") || !strings.Contains(errOut, "nothing was registered") {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	for _, ch := range []string{"ch-0", "ch-2"} {
		if s.get(t, meta.RegistryKey(ch)) {
			t.Errorf("%s registered by a register that failed", ch)
		}
	}
	code, out, errOut = s.cli(t, "register", "--if-not-exists", "--collection", "1", "ch-0", "ch-1", "ch-2")
	if code != 0 || !strings.Contains(out, "registered 2 channel(s)") || !strings.Contains(out, "left as they are: ch-1") {
		t.Fatalf("--if-not-exists: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = s.cli(t, "deregister", "ch-0", "ch-2")
	if code != 0 || s.get(t, meta.RegistryKey("ch-0")) || s.get(t, meta.RegistryKey("ch-2")) {
		t.Fatalf("deregister of two: exit %d\n%s%s", code, out, errOut)
	}
	if code, _, errOut := s.cli(t, "deregister", "ch-1", "ch-9"); code != 1 || !strings.Contains(errOut, "not registered: ch-9") || s.get(t, meta.RegistryKey("ch-1")) {
		t.Fatalf("deregister with one unknown: exit %d, %q", code, errOut)
	}
	if code, _, errOut := s.cli(t, "register", "ch-5"); code != 2 || !strings.Contains(errOut, "--collection is required") {
		t.Fatalf("register without --collection: exit %d, %q", code, errOut)
	}
}

func TestRegisterAllSplitsUnderMaxTxnOps(t *testing.T) {
	b := memkv.New(memkv.WithMaxTxnOps(3))
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var specs []meta.ChannelSpec
	for i := range 7 {
		specs = append(specs, meta.ChannelSpec{Name: fmt.Sprintf("ch-%d", i), CollectionID: 1})
	}
	// ch-4 is taken: the first two txns (ch-0..2, ch-3..5) are told apart.
	if _, _, err := registerAll(ctx, b, specs[4:5], func(int) { t.Fatal("one channel split") }); err != nil {
		t.Fatal(err)
	}
	split := 0
	done, txns, err := registerAll(ctx, b, specs, func(n int) { split = n })
	if split != 3 {
		t.Fatalf("split told %d txns, want 3", split)
	}
	if err == nil || !strings.Contains(err.Error(), "already registered: ch-4") {
		t.Fatalf("err = %v, want ch-4 already registered", err)
	}
	if strings.Join(done, " ") != "ch-0 ch-1 ch-2" || txns != 1 {
		t.Fatalf("reported %v in %d txns, want ch-0 ch-1 ch-2 in 1", done, txns)
	}
	for i, want := range []bool{true, true, true, false, true, false, false} {
		if _, _, err := b.Get(ctx, meta.RegistryKey(specs[i].Name)); (err == nil) != want {
			t.Errorf("%s registered = %v, want %v", specs[i].Name, err == nil, want)
		}
	}
}

func (s *testStore) node(t *testing.T, id int64, state meta.NodeState) {
	t.Helper()
	v, err := meta.EncodeNodeSession(meta.NodeSession{ID: id, State: state})
	if err != nil {
		t.Fatal(err)
	}
	s.put(t, meta.NodeSessionKey(id), v)
}

func TestDrainLastServingNodeNeedsForce(t *testing.T) {
	s := newTestStore(t)
	s.node(t, 3, meta.NodeServing)
	s.node(t, 4, meta.NodeStopping)
	code, _, errOut := s.cli(t, "drain", "3")
	if code != 1 || !strings.Contains(errOut, "nowhere to go") || !strings.Contains(errOut, "--force") {
		t.Fatalf("drain of the last serving node: exit %d, %q", code, errOut)
	}
	s.node(t, 5, meta.NodeServing)
	if code, out, errOut := s.cli(t, "drain", "3"); code != 0 || !strings.Contains(errOut, "warning: no coordinator leads") {
		t.Fatalf("drain with another serving node: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut := s.cli(t, "drain", "5", "--force"); code != 0 {
		t.Fatalf("drain --force of the last serving node: exit %d\n%s%s", code, out, errOut)
	}
	if code, _, errOut := s.cli(t, "drain", "9"); code != 1 || !strings.Contains(errOut, "no live session") {
		t.Fatalf("drain of an unknown node: exit %d, %q", code, errOut)
	}
}

func TestGlobalFlagsFromEnv(t *testing.T) {
	s := newTestStore(t)
	s.assign(t, 0, "ch-env", meta.ToWatch)
	t.Setenv("CHANWATCH_ENDPOINTS", s.flags[1])
	t.Setenv("CHANWATCH_ROOT", s.flags[3])
	code, out, errOut := runCLI(t, "status", "--exit-zero")
	if code != 0 || !strings.Contains(out, "ch-env") {
		t.Fatalf("status from env: exit %d\n%s%s", code, out, errOut)
	}
	// A flag wins over the environment.
	code, _, errOut = runCLI(t, "status", "--root", "typo")
	if code != 1 || !strings.Contains(errOut, `root "typo" holds no chanwatch data`) {
		t.Fatalf("--root did not win over CHANWATCH_ROOT: exit %d, %q", code, errOut)
	}
	t.Setenv("CHANWATCH_DIAL_TIMEOUT", "soon")
	if code, _, errOut := runCLI(t, "status"); code != 2 || !strings.Contains(errOut, "CHANWATCH_DIAL_TIMEOUT") {
		t.Fatalf("bad env value: exit %d, %q", code, errOut)
	}
}

func TestVersionAndTypos(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		code, out, _ := runCLI(t, args...)
		if code != 0 || !strings.HasPrefix(out, "chanwatch ") || !strings.Contains(out, "commit ") {
			t.Errorf("%v: exit %d, %q", args, code, out)
		}
	}
	code, _, errOut := runCLI(t, "stauts")
	if code != 2 || !strings.Contains(errOut, "did you mean") || !strings.Contains(errOut, "status") {
		t.Errorf("typo: exit %d, %q", code, errOut)
	}
	code, _, errOut = runCLI(t, "register", "--collection", "abc", "ch")
	if code != 2 || strings.Contains(errOut, "strconv") || !strings.Contains(errOut, "not a whole number") {
		t.Errorf("parse error: exit %d, %q", code, errOut)
	}
}

func TestConnectErrorsNameTheCause(t *testing.T) {
	s := newTestStore(t)
	ep := strings.Replace(s.flags[1], "http://", "https://", 1)
	code, _, errOut := runCLI(t, "status", "--endpoints", ep, "--dial-timeout", "1s")
	if code != 1 || !strings.Contains(errOut, "does not speak TLS") {
		t.Fatalf("https against a plaintext etcd: exit %d, %q", code, errOut)
	}
	code, _, errOut = runCLI(t, "status", "--endpoints", "http://127.0.0.1:1", "--dial-timeout", "300ms")
	if code != 1 || !strings.Contains(errOut, "connection refused") {
		t.Fatalf("closed port: exit %d, %q", code, errOut)
	}
}
