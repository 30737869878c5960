package nodewatch_test

import (
	"errors"
	"math"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/nodewatch"
	"github.com/chanwatch/chanwatch/session"
)

// The node publishes its channels' measured loads in load/<id>, on its
// lease, and drops a channel it released.
func TestReportLoadPublished(t *testing.T) {
	e := newEnv(t, nodewatch.WithLoadInterval(time.Second))
	id := e.start()
	for _, ch := range []string{"a", "b"} {
		e.assign(id, ch)
		e.waitState(id, ch, meta.Watched)
	}
	if err := e.node.ReportLoad("a", 10); err != nil {
		t.Fatal(err)
	}
	if err := e.node.ReportLoad("b", 2); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []float64{-1, math.NaN(), math.Inf(1)} {
		if err := e.node.ReportLoad("a", bad); !errors.Is(err, meta.ErrInvalidPlacement) {
			t.Errorf("ReportLoad(a, %v) = %v, want ErrInvalidPlacement", bad, err)
		}
	}
	if err := e.node.ReportLoad("a/b", 1); !errors.Is(err, meta.ErrInvalidChannel) {
		t.Errorf("ReportLoad(a/b) = %v, want ErrInvalidChannel", err)
	}
	// report waits, advancing the clock one interval at a time, until the
	// report holds want exactly.
	report := func(want map[string]float64) kv.KeyValue {
		t.Helper()
		var got kv.KeyValue
		eventually(t, func() bool {
			e.clock.Advance(time.Second)
			kvp, _, err := e.store.Get(e.ctx(), meta.LoadKey(id))
			if err != nil {
				return false
			}
			rep, err := meta.DecodeLoadReport(kvp.Key, kvp.Value)
			if err != nil || rep.Node != id || len(rep.Loads) != len(want) {
				return false
			}
			for ch, l := range want {
				if rep.Loads[ch] != l {
					return false
				}
			}
			got = kvp
			return true
		}, waitFor, "load report %v", want)
		return got
	}
	kvp := report(map[string]float64{"a": 10, "b": 2})
	members, _, err := session.ListNodes(e.ctx(), e.store)
	if err != nil || len(members) != 1 || kvp.Lease != members[0].Lease {
		t.Fatalf("load report on lease %d, session %+v (%v)", kvp.Lease, members, err)
	}
	// b is released: the next report that is written leaves it out.
	e.toRelease(id, "b")
	e.waitState(id, "b", meta.Released)
	if err := e.node.ReportLoad("a", 30); err != nil {
		t.Fatal(err)
	}
	report(map[string]float64{"a": 30})
}
