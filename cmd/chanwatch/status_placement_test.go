package main

import (
	"strings"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/meta"
)

// register --weight/--require/--spread writes the spec's placement fields;
// status shows capacity, labels, load and the channels that wait for a
// node with their labels, as a problem.
func TestRegisterPlacementAndStatus(t *testing.T) {
	s := newTestStore(t)
	code, out, errOut := s.cli(t, "register", "--create", "--collection", "3", "--weight", "2.5",
		"--require", "group=gpu", "--spread", "zone", "ch-gpu")
	if code != 0 {
		t.Fatalf("register: exit %d\n%s%s", code, out, errOut)
	}
	for _, bad := range [][]string{{"--weight", "-1"}, {"--require", "group"}, {"--spread", "-zone"}, {"--weight", "NaN"}} {
		args := append([]string{"register", "--collection", "3"}, bad...)
		if code, out, errOut := s.cli(t, append(args, "ch-bad")...); code != 2 {
			t.Errorf("register %v: exit %d, want 2 (usage)\n%s%s", bad, code, out, errOut)
		}
	}
	// A node with capacity and labels, and the channel waiting in remaining
	// as the coordinator leaves it.
	sess, err := meta.EncodeNodeSession(meta.NodeSession{ID: 4, State: meta.NodeServing, StartTime: time.Now(),
		Capacity: 2, Labels: meta.MustLabels("zone=a", "group=cpu")})
	if err != nil {
		t.Fatal(err)
	}
	s.put(t, meta.NodeSessionKey(4), sess)
	info, err := meta.EncodeChannelInfo(meta.ChannelInfo{Name: "ch-gpu", CollectionID: 3, State: meta.ToWatch,
		StartTime: time.Now(), LastError: "waiting: no serving node has the required labels group=gpu"})
	if err != nil {
		t.Fatal(err)
	}
	s.put(t, meta.RemainingKey("ch-gpu"), info)
	// A channel on node 4 whose measured load counts in place of its weight.
	s.assign(t, 4, "ch-cpu", meta.Watched)
	rep, err := meta.EncodeLoadReport(meta.LoadReport{Node: 4, Time: time.Now(), Loads: map[string]float64{"ch-cpu": 7}})
	if err != nil {
		t.Fatal(err)
	}
	s.put(t, meta.LoadKey(4), rep)
	_, out, _ = s.cli(t, "status", "--exit-zero")
	for _, want := range []string{"CAPACITY", "LABELS", "group=cpu,zone=a", "WEIGHT", "REQUIRE", "group=gpu", "2.5",
		"PROBLEM: 1 channel(s) wait for a node that may take them (ch-gpu): no serving node has the required labels group=gpu"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	_, out, _ = s.cli(t, "status", "-o", "json", "--exit-zero")
	for _, want := range []string{`"capacity": 2`, `"zone": "a"`, `"weight": 2.5`, `"require": "group=gpu"`, `"waiting": true`,
		`"measured_load": 7`, `"load": 7`, `"utilisation": 3.5`} {
		if !strings.Contains(out, want) {
			t.Errorf("status -o json lacks %q:\n%s", want, out)
		}
	}
}

// A malformed --label or --capacity is a usage error, found before the
// node connects anywhere.
func TestNodePlacementFlagsValidated(t *testing.T) {
	for _, bad := range [][]string{{"--label", "zone"}, {"--label", "zone=a", "--label", "zone=b"}, {"--label", "zo ne=a"},
		{"--capacity", "-2"}, {"--capacity", "+Inf"}} {
		args := append([]string{"node", "--endpoints", "127.0.0.1:1", "--http", ""}, bad...)
		code, out, errOut := runCLI(t, args...)
		if code != 2 {
			t.Errorf("node %v: exit %d, want 2 (usage)\n%s%s", bad, code, out, errOut)
		}
	}
	if code, _, _ := runCLI(t, "coord", "--policy", "weightd", "--endpoints", "127.0.0.1:1"); code != 2 {
		t.Errorf("coord --policy weightd: exit %d, want 2", code)
	}
}
