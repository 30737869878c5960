package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/internal/etcdembed"
)

// metricRef matches a chanwatch metric name in a PromQL expression (the
// recording rules' own names have colons and are not matched).
var metricRef = regexp.MustCompile(`\bchanwatch_[a-z0-9_]+`)

// deployMetrics returns every chanwatch metric deploy/'s rules and
// dashboard query, each with the files using it; histogram series
// (_bucket, _sum, _count) are named by their family.
func deployMetrics(t *testing.T) map[string][]string {
	t.Helper()
	refs := map[string][]string{}
	add := func(file, text string) {
		for _, m := range metricRef.FindAllString(text, -1) {
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				m = strings.TrimSuffix(m, suf)
			}
			if !slices.Contains(refs[m], file) {
				refs[m] = append(refs[m], file)
			}
		}
	}
	rules, err := os.ReadFile("../../deploy/prometheus/rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	add("rules.yml", string(rules))
	raw, err := os.ReadFile("../../deploy/grafana/chanwatch.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	if len(dash.Panels) == 0 {
		t.Fatal("dashboard has no panels")
	}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			if !metricRef.MatchString(q.Expr) {
				t.Errorf("panel %q: query %q names no chanwatch metric", p.Title, q.Expr)
			}
			add("chanwatch.json", q.Expr)
		}
	}
	return refs
}

// scrapeFamilies returns the metric families /metrics at addr exports.
func scrapeFamilies(addr string) (map[string]bool, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	fams := map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
			fams[f[2]] = true
		}
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return fams, sc.Err()
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestDeployQueriesUseExportedMetrics builds the CLI, runs a coordinator
// and a node on an embedded etcd, registers a channel so each has done its
// work once, and requires every metric that deploy/prometheus/rules.yml or
// deploy/grafana/chanwatch.json queries to be on their /metrics.
func TestDeployQueriesUseExportedMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs processes: not run when testing.Short()")
	}
	refs := deployMetrics(t)
	for _, must := range []string{"chanwatch_coordinator_is_leader", "chanwatch_coordinator_channels", "chanwatch_coordinator_pass_duration_seconds"} {
		if refs[must] == nil {
			t.Errorf("deploy/ never queries %s", must)
		}
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "chanwatch")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	srv := etcdembed.NewForTest(t)
	common := []string{"--endpoints", srv.Endpoints()[0], "--root", "deploy-test"}
	start := func(args ...string) {
		cmd := exec.Command(bin, append(args, common...)...)
		f, err := os.Create(filepath.Join(dir, args[0]+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = f, f
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			f.Close()
			if t.Failed() {
				b, _ := os.ReadFile(f.Name())
				t.Logf("--- %s log (tail) ---\n%s", args[0], tail(string(b), 2000))
			}
		})
	}
	coordAddr, nodeAddr := freeAddr(t), freeAddr(t)
	start("coord", "--http", coordAddr, "--session-ttl", "2s", "--node-ttl", "2s")
	start("node", "--http", nodeAddr, "--session-ttl", "2s")
	if out, err := exec.Command(bin, append([]string{"register", "--create", "--collection", "1", "deploy-ch-0"}, common...)...).CombinedOutput(); err != nil {
		t.Fatalf("register: %v\n%s", err, out)
	}

	// Poll both processes until every referenced metric is exported: the
	// labelled histograms appear with their first observation.
	deadline := time.Now().Add(60 * time.Second)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	// The node daemon exports its own state too (nodewatch.WithRegisterer).
	nodeOwn := []string{"chanwatch_node_channels", "chanwatch_node_session_up", "chanwatch_node_id"}
	var missing []string
	for {
		exported := map[string]bool{}
		for _, addr := range []string{coordAddr, nodeAddr} {
			fams, err := scrapeFamilies(addr)
			if err != nil {
				continue // not listening yet
			}
			for f := range fams {
				exported[f] = true
				if addr == nodeAddr {
					exported["node:"+f] = true
				}
			}
		}
		missing = missing[:0]
		for m := range refs {
			if !exported[m] {
				missing = append(missing, m)
			}
		}
		for _, m := range nodeOwn {
			if !exported["node:"+m] {
				missing = append(missing, m)
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		<-tick.C // polling other processes: no event to wait on
	}
	slices.Sort(missing)
	for _, m := range missing {
		t.Errorf("%s (used in %v) is not exported by the coordinator or the node", m, refs[m])
	}
}

// TestDeployMetricRefParsing: the name extraction the test above relies on
// finds metrics in rules and queries and leaves recording rules alone.
func TestDeployMetricRefParsing(t *testing.T) {
	got := metricRef.FindAllString(`sum(rate(chanwatch_coordinator_txns_total{result="ok"}[5m])) / chanwatch:leaders:sum + chanwatch_kv_op_duration_seconds_bucket`, -1)
	want := []string{"chanwatch_coordinator_txns_total", "chanwatch_kv_op_duration_seconds_bucket"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if refs := deployMetrics(t); len(refs) < 15 {
		t.Fatalf("only %d metrics referenced by deploy/: %v", len(refs), refs)
	}
}
