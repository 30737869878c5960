package nodewatch_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/nodewatch"
)

// nodeMetrics renders the node gauges as "name{labels} value" lines.
func nodeMetrics(t testing.TB, reg *prometheus.Registry) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			fmt.Fprintf(&b, "%s{%s} %g\n", mf.GetName(), strings.Join(labels, ","), m.GetGauge().GetValue())
		}
	}
	return b.String()
}

func TestNodeMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnv(t, nodewatch.WithRegisterer(reg))
	want := func(s string) func() bool {
		return func() bool { return nodeMetrics(t, reg) == s }
	}
	// Every series exists before the node registers.
	if got := nodeMetrics(t, reg); got != `chanwatch_node_channels{state=releasing} 0
chanwatch_node_channels{state=running} 0
chanwatch_node_channels{state=unreleased} 0
chanwatch_node_channels{state=watching} 0
chanwatch_node_id{} 0
chanwatch_node_session_up{} 0
` {
		t.Fatalf("before Run:\n%s", got)
	}
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 6 {
		t.Fatalf("%d series, %v", n, err)
	}
	g := newGate()
	e.h.watch = g.watch
	relGate := make(chan struct{})
	fail := true
	e.h.release = func(ctx context.Context, ch string) error {
		<-relGate
		if fail {
			return errBoom
		}
		return nil
	}
	id := e.start()
	e.assign(id, "a")
	g.waitStarted(t, "a")
	eventually(t, want(fmt.Sprintf(`chanwatch_node_channels{state=releasing} 0
chanwatch_node_channels{state=running} 0
chanwatch_node_channels{state=unreleased} 0
chanwatch_node_channels{state=watching} 1
chanwatch_node_id{} %d
chanwatch_node_session_up{} 1
`, id)), waitFor, "a watching:\n%s", nodeMetrics(t, reg))
	close(g.open)
	e.waitState(id, "a", meta.Watched)
	eventually(t, want(fmt.Sprintf(`chanwatch_node_channels{state=releasing} 0
chanwatch_node_channels{state=running} 1
chanwatch_node_channels{state=unreleased} 0
chanwatch_node_channels{state=watching} 0
chanwatch_node_id{} %d
chanwatch_node_session_up{} 1
`, id)), waitFor, "a running:\n%s", nodeMetrics(t, reg))
	e.toRelease(id, "a")
	eventually(t, want(fmt.Sprintf(`chanwatch_node_channels{state=releasing} 1
chanwatch_node_channels{state=running} 0
chanwatch_node_channels{state=unreleased} 0
chanwatch_node_channels{state=watching} 0
chanwatch_node_id{} %d
chanwatch_node_session_up{} 1
`, id)), waitFor, "a releasing:\n%s", nodeMetrics(t, reg))
	close(relGate)
	e.waitState(id, "a", meta.ReleaseFailure)
	eventually(t, want(fmt.Sprintf(`chanwatch_node_channels{state=releasing} 0
chanwatch_node_channels{state=running} 0
chanwatch_node_channels{state=unreleased} 1
chanwatch_node_channels{state=watching} 0
chanwatch_node_id{} %d
chanwatch_node_session_up{} 1
`, id)), waitFor, "a unreleased:\n%s", nodeMetrics(t, reg))
	e.h.mu.Lock()
	fail = false
	e.h.mu.Unlock()
	e.toRelease(id, "a")
	e.waitState(id, "a", meta.Released)
	e.stop()
	if got := nodeMetrics(t, reg); got != fmt.Sprintf(`chanwatch_node_channels{state=releasing} 0
chanwatch_node_channels{state=running} 0
chanwatch_node_channels{state=unreleased} 0
chanwatch_node_channels{state=watching} 0
chanwatch_node_id{} %d
chanwatch_node_session_up{} 0
`, id) {
		t.Fatalf("after Run:\n%s", got)
	}
	// A second Node on the same Registerer is refused.
	if _, err := nodewatch.New(e.client, e.h, nodewatch.WithRegisterer(reg)); err == nil {
		t.Fatal("second Node registered the same metrics")
	}
}
