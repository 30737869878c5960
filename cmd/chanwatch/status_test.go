package main

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mattn/go-runewidth"

	"github.com/chanwatch/chanwatch/internal/etcdembed"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/etcdkv"
	"github.com/chanwatch/chanwatch/meta"
)

// testStore is an embedded etcd with a backend on one root, for writing
// the keys a scenario needs, and the global flags that reach it.
type testStore struct {
	b     kv.Backend
	flags []string
}

func newTestStore(t *testing.T) *testStore {
	t.Helper()
	srv := etcdembed.NewForTest(t)
	cli, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	const root = "cli-test"
	b, err := etcdkv.New(cli, root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return &testStore{b: b, flags: []string{"--endpoints", srv.Endpoints()[0], "--root", root}}
}

func (s *testStore) put(t *testing.T, key string, val []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := kv.Put(ctx, s.b, key, val); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

func (s *testStore) get(t *testing.T, key string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _, err := s.b.Get(ctx, key)
	return err == nil
}

func (s *testStore) assign(t *testing.T, node int64, ch string, st meta.State) {
	t.Helper()
	spec, err := meta.EncodeChannelSpec(meta.ChannelSpec{Name: ch, CollectionID: 7})
	if err != nil {
		t.Fatal(err)
	}
	s.put(t, meta.RegistryKey(ch), spec)
	info, err := meta.EncodeChannelInfo(meta.ChannelInfo{Name: ch, CollectionID: 7, State: st, StartTime: time.Now(), AssignRevision: 1})
	if err != nil {
		t.Fatal(err)
	}
	key := meta.RemainingKey(ch)
	if node != 0 {
		key = meta.ChannelKey(node, ch)
	}
	s.put(t, key, info)
}

// cli runs a command line against the store.
func (s *testStore) cli(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return runCLI(t, append(args, s.flags...)...)
}

func TestStatusOwnerGoneNoLeaderExit1(t *testing.T) {
	s := newTestStore(t)
	s.assign(t, 5, "ch-gone", meta.Watched) // node 5 has no session
	s.assign(t, 0, "ch-waiting", meta.ToWatch)
	code, out, errOut := s.cli(t, "status")
	if code != 1 {
		t.Fatalf("exit %d, want 1\n%s%s", code, out, errOut)
	}
	for _, want := range []string{"leader NONE", "Watched (owner gone)", "5 (gone)", "1 owned by a gone node", "1 remaining", "PROBLEM: no coordinator leads"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(errOut, "problem") || strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
		t.Errorf("stderr is not one line naming the problems: %q", errOut)
	}
	if code, out, errOut := s.cli(t, "status", "--exit-zero"); code != 0 || !strings.Contains(out, "owner gone") {
		t.Errorf("--exit-zero: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, _ := s.cli(t, "status", "-o", "json", "--exit-zero"); code != 0 || !strings.Contains(out, `"owner_gone": true`) {
		t.Errorf("-o json lacks owner_gone: exit %d\n%s", code, out)
	}
}

func TestStatusCorruptRegistryIsNotDeregistered(t *testing.T) {
	s := newTestStore(t)
	s.assign(t, 0, "ch-bad", meta.ToWatch)
	s.put(t, meta.RegistryKey("ch-bad"), []byte("{not json"))
	code, out, _ := s.cli(t, "status")
	if code != 1 {
		t.Fatalf("exit %d, want 1\n%s", code, out)
	}
	if !strings.Contains(out, "registry value corrupt") || strings.Contains(out, "deregistered") {
		t.Errorf("a corrupt registry value is not shown as corrupt:\n%s", out)
	}
	if !strings.Contains(out, "1 corrupt key(s)") {
		t.Errorf("corrupt key not counted:\n%s", out)
	}
}

func TestStatusColumnsAlignWithWideNames(t *testing.T) {
	s := newTestStore(t)
	s.assign(t, 0, "通道-宽", meta.ToWatch)
	s.assign(t, 0, "ch-narrow", meta.ToWatch)
	s.assign(t, 0, "cafe\u0301", meta.ToWatch) // combining accent: 5 runes, 4 columns
	_, out, _ := s.cli(t, "status", "--exit-zero")
	col := -1
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, "remaining") || !strings.Contains(line, "ToWatch") {
			continue
		}
		i := strings.Index(line, "remaining")
		c := runewidth.StringWidth(line[:i])
		if col >= 0 && c != col {
			t.Fatalf("OWNER column at display column %d and %d:\n%s", col, c, out)
		}
		col = c
	}
	if col < 0 {
		t.Fatalf("no channel rows:\n%s", out)
	}
}

func TestStatusFiltersAndSummary(t *testing.T) {
	s := newTestStore(t)
	s.assign(t, 5, "ch-a", meta.Watched)
	s.assign(t, 6, "ch-b", meta.ToWatch)
	s.put(t, meta.RegistryKey("ch-c"), mustSpec(t, "ch-c", 9))
	row := func(out, ch string) bool { return strings.Contains(out, "\n"+ch+" ") }
	_, out, _ := s.cli(t, "status", "--exit-zero", "--node", "5")
	if !row(out, "ch-a") || row(out, "ch-b") {
		t.Errorf("--node 5:\n%s", out)
	}
	_, out, _ = s.cli(t, "status", "--exit-zero", "--state", "towatch")
	if row(out, "ch-a") || !row(out, "ch-b") {
		t.Errorf("--state towatch:\n%s", out)
	}
	_, out, _ = s.cli(t, "status", "--exit-zero", "--collection", "8")
	if row(out, "ch-a") || row(out, "ch-b") {
		t.Errorf("--collection 8:\n%s", out)
	}
	code, out, _ := s.cli(t, "status", "--summary")
	if code != 1 || strings.Contains(out, "CHANNEL  COLLECTION") || !strings.Contains(out, "2 owned by a gone node, 1 registered but unassigned") {
		t.Errorf("--summary: exit %d\n%s", code, out)
	}
}

func mustSpec(t *testing.T, ch string, coll int64) []byte {
	t.Helper()
	b, err := meta.EncodeChannelSpec(meta.ChannelSpec{Name: ch, CollectionID: coll})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestStatusWatchRedrawsOnTimerAndKeepsRunning(t *testing.T) {
	s := newTestStore(t)
	s.assign(t, 5, "ch-gone", meta.Watched) // a problem: --watch must not exit on it
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() { done <- runContext(ctx, append([]string{"status", "--watch"}, s.flags...), &out, &errOut) }()
	// No change is made: only the timer can redraw, so three headers mean
	// it ticks. The deadline is generous for a loaded machine.
	deadline := time.After(30 * time.Second)
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	for strings.Count(out.String(), "root cli-test") < 3 {
		select {
		case code := <-done:
			t.Fatalf("--watch exited %d on its own\n%s%s", code, out.String(), errOut.String())
		case <-deadline:
			t.Fatalf("no timer redraw within 30s:\n%s", out.String())
		case <-poll.C:
		}
	}
	// A change shows up without waiting for a timer only in the redraw
	// after it: wait for the new channel to appear.
	s.assign(t, 0, "ch-new", meta.ToWatch)
	for !strings.Contains(out.String(), "ch-new") {
		select {
		case <-deadline:
			t.Fatalf("change not shown:\n%s", out.String())
		case <-poll.C:
		}
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("--watch exit %d after interrupt, want 0: %s", code, errOut.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("--watch did not return after its context ended")
	}
}

func TestStatusShowsPreparing(t *testing.T) {
	s := newTestStore(t)
	s.assign(t, 5, "ch-warm", meta.Watched)
	s.assign(t, 5, "ch-ready", meta.Watched)
	for ch, st := range map[string]meta.State{"ch-warm": meta.ToPrepare, "ch-ready": meta.Prepared} {
		val, err := meta.EncodePrepareInfo(meta.ChannelInfo{Name: ch, CollectionID: 7, State: st, StartTime: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		s.put(t, meta.PrepareKey(6, ch), val)
	}
	_, out, _ := s.cli(t, "status", "--exit-zero")
	for _, want := range []string{"(preparing on 6 for", "(prepared on 6 for"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	_, out, _ = s.cli(t, "status", "-o", "json", "--exit-zero")
	for _, want := range []string{`"state": "ToPrepare"`, `"state": "Prepared"`} {
		if !strings.Contains(out, want) {
			t.Errorf("-o json lacks %q:\n%s", want, out)
		}
	}
}
