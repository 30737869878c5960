package bench

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
)

// The default set leaves out B4 when the raft backend is not linked (the
// plain CLI build), and says so; asked for by name, B4 stays chosen (and
// fails when run, saying why). With the backend linked, B4 is in the set.
func TestChooseWithoutRaft(t *testing.T) {
	ids := func(ss []Scenario) string {
		var out []string
		for _, s := range ss {
			out = append(out, s.ID)
		}
		return strings.Join(out, " ")
	}
	linked := StartRaft
	defer func() { StartRaft = linked }()
	if linked == nil {
		t.Fatal("this package's tests link the raft backend (raft_test.go)")
	}

	var warn bytes.Buffer
	opts := Options{Scale: 1, Warnings: &warn}
	all, err := choose(opts, regexp.MustCompile(""), "")
	if err != nil || !strings.Contains(ids(all), "B4") || warn.Len() != 0 {
		t.Fatalf("linked: %s, %v, warnings %q", ids(all), err, warn.String())
	}

	StartRaft = nil
	some, err := choose(opts, regexp.MustCompile(""), "")
	if err != nil || strings.Contains(ids(some), "B4") || len(some) != len(all)-1 {
		t.Fatalf("not linked: %s, %v; want %s without B4", ids(some), err, ids(all))
	}
	if !strings.Contains(warn.String(), "B4 backends: not run") {
		t.Fatalf("warnings %q", warn.String())
	}
	named, err := choose(opts, regexp.MustCompile("B4"), "B4")
	if err != nil || ids(named) != "B4" {
		t.Fatalf("--run B4 without the backend: %s, %v", ids(named), err)
	}
}
