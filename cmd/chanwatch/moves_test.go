package main

import (
	"strings"
	"testing"

	"github.com/chanwatch/chanwatch/meta"
)

func TestUndrainCommand(t *testing.T) {
	s := newTestStore(t)
	s.node(t, 3, meta.NodeServing)
	s.node(t, 4, meta.NodeServing)
	if code, out, errOut := s.cli(t, "drain", "3"); code != 0 {
		t.Fatalf("drain: exit %d\n%s%s", code, out, errOut)
	}
	s.assign(t, 3, "ch-a", meta.Watched)
	s.assign(t, 3, "ch-b", meta.ToRelease)
	code, out, _ := s.cli(t, "status", "--exit-zero")
	if code != 0 || !strings.Contains(out, "stopping (drain)") || !strings.Contains(out, "node 3 stopping (drain): 1 move(s) in flight, 1 channel(s) waiting to move") {
		t.Fatalf("status of a draining node:\n%s", out)
	}
	code, out, errOut := s.cli(t, "undrain", "3")
	if code != 0 || !strings.Contains(out, "node 3 is serving") {
		t.Fatalf("undrain: exit %d\n%s%s", code, out, errOut)
	}
	code, out, _ = s.cli(t, "status", "--exit-zero", "--summary")
	if code != 0 || strings.Contains(out, "stopping") {
		t.Fatalf("after undrain, status still shows a stopping node:\n%s", out)
	}
	// A node shutting down by itself is refused, and so is an unknown one.
	v, err := meta.EncodeNodeSession(meta.NodeSession{ID: 4, State: meta.NodeStopping, StopReason: meta.StopShutdown})
	if err != nil {
		t.Fatal(err)
	}
	s.put(t, meta.NodeSessionKey(4), v)
	if code, _, errOut := s.cli(t, "undrain", "4"); code != 1 || !strings.Contains(errOut, "shutting down") {
		t.Fatalf("undrain of a node shutting down: exit %d, %q", code, errOut)
	}
	if code, _, errOut := s.cli(t, "undrain", "9"); code != 1 || !strings.Contains(errOut, "no live session") {
		t.Fatalf("undrain of an unknown node: exit %d, %q", code, errOut)
	}
	if code, _, errOut := s.cli(t, "undrain", "x"); code != 2 || !strings.Contains(errOut, "positive node ID") {
		t.Fatalf("undrain x: exit %d, %q", code, errOut)
	}
}

func TestMayStopCommand(t *testing.T) {
	s := newTestStore(t)
	s.node(t, 3, meta.NodeServing)
	s.node(t, 4, meta.NodeServing)
	for _, ch := range []string{"ch-0", "ch-1"} {
		v, err := meta.EncodeChannelSpec(meta.ChannelSpec{Name: ch, CollectionID: 1})
		if err != nil {
			t.Fatal(err)
		}
		s.put(t, meta.RegistryKey(ch), v)
	}
	s.assign(t, 3, "ch-0", meta.Watched)
	s.assign(t, 4, "ch-1", meta.ToWatch)
	code, out, errOut := s.cli(t, "may-stop", "3")
	if code != 1 || !strings.Contains(errOut, "node 3 may not stop now") || !strings.Contains(errOut, "ch-1 is ToWatch on node 4") {
		t.Fatalf("may-stop with a channel not running: exit %d\n%s%s", code, out, errOut)
	}
	s.assign(t, 4, "ch-1", meta.Watched)
	code, out, errOut = s.cli(t, "may-stop", "3")
	if code != 0 || !strings.Contains(out, "node 3 may stop") {
		t.Fatalf("may-stop when settled: exit %d\n%s%s", code, out, errOut)
	}
	s.node(t, 4, meta.NodeStopping)
	if code, _, errOut := s.cli(t, "may-stop", "3"); code != 1 || !strings.Contains(errOut, "stopping node 4") {
		t.Fatalf("may-stop while another node drains: exit %d, %q", code, errOut)
	}
	if code, _, errOut := s.cli(t, "may-stop", "9"); code != 1 || !strings.Contains(errOut, "no live session") {
		t.Fatalf("may-stop of an unknown node: exit %d, %q", code, errOut)
	}
}
