package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// smokeScale is the smallest sizes: every scenario runs, in a few seconds.
const smokeScale = 0.01

// TestCommandSmoke runs every scenario through the bench command at the
// smallest sizes and checks the JSON's shape (not the speed): ten
// objects, each with every field, sane sizes and times.
func TestCommandSmoke(t *testing.T) {
	out := filepath.Join(t.TempDir(), "b.json")
	cmd := NewCommand()
	var stdout bytes.Buffer
	cmd.SetOut(&stdout)
	cmd.SetErr(&stdout)
	cmd.SetArgs([]string{"--scale", "0.01", "--json", out, "-v"})
	if err := cmd.ExecuteContext(context.Background()); err != nil {
		t.Fatalf("bench: %v\n%s", err, stdout.String())
	}
	t.Log(stdout.String())
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var objs []map[string]any
	if err := json.Unmarshal(b, &objs); err != nil {
		t.Fatalf("JSON: %v\n%s", err, b)
	}
	want := []string{"B1 assign", "B2 failover", "B3 recovery", "B4 backends", "B5 memory", "B6 growth", "B7 writes", "B8 handoff", "B9 drain", "B10 rolling restart", "B11 balance"}
	if len(objs) != len(want) {
		t.Fatalf("%d objects, want %d:\n%s", len(objs), len(want), b)
	}
	fields := []string{"name", "n", "chanwatch_s", "baseline_s", "ratio", "etcd_writes", "etcd_writes_per_channel", "notes"}
	for i, o := range objs {
		if fig, ok := o["figures"].(map[string]any); ok && want[i] == "B11 balance" {
			delete(o, "figures") // B11's secondary figures (see TestBalanceQuality)
		} else if ok && want[i] == "B3 recovery" {
			for _, f := range []string{"raw_stream_s", "ratio_to_stream"} {
				if v, ok := fig[f].(float64); !ok || v <= 0 {
					t.Errorf("B3's figure %s is %v, want a positive number", f, fig[f])
				}
			}
			delete(o, "figures")
		}
		if len(o) != len(fields) {
			t.Errorf("object %d has %d fields, want exactly %v: %v", i, len(o), fields, o)
		}
		for _, f := range fields {
			if _, ok := o[f]; !ok {
				t.Errorf("object %d lacks %q: %v", i, f, o)
			}
		}
		if o["name"] != want[i] {
			t.Errorf("object %d is %v, want %s", i, o["name"], want[i])
		}
		for _, f := range []string{"n", "chanwatch_s", "baseline_s", "ratio"} {
			if v, ok := o[f].(float64); !ok || v <= 0 {
				t.Errorf("%s: %s = %v, want a positive number", want[i], f, o[f])
			}
		}
		if v, ok := o["etcd_writes"].(float64); want[i] == "B11 balance" { // policy only: no store
			if !ok || v != 0 {
				t.Errorf("%s: etcd_writes = %v, want 0", want[i], o["etcd_writes"])
			}
		} else if !ok || v < 1 || v != float64(int64(v)) {
			t.Errorf("%s: etcd_writes = %v, want a positive integer", want[i], o["etcd_writes"])
		}
		if _, ok := o["etcd_writes_per_channel"].(float64); !ok {
			t.Errorf("%s: etcd_writes_per_channel = %v, want a number", want[i], o["etcd_writes_per_channel"])
		}
		if s, _ := o["notes"].(string); !strings.Contains(s, "goal") {
			t.Errorf("%s: notes %q do not state the goal", want[i], s)
		}
	}
	// The table names every scenario too.
	for _, name := range want {
		if !strings.Contains(stdout.String(), name) {
			t.Errorf("table lacks %s:\n%s", name, stdout.String())
		}
	}
}

// TestCommandFlags checks the command's flag validation, and that it can
// live under a root that has its own persistent --endpoints.
func TestCommandFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--scale", "0"},
		{"--scale", "2"},
		{"--quick", "--scale", "0.5"},
		{"--endpoints", "localhost"},
		{"--run", "("},
		{"--run", "B99"},
		{"extra"},
	} {
		cmd := NewCommand()
		cmd.SetOut(new(bytes.Buffer))
		cmd.SetErr(new(bytes.Buffer))
		cmd.SetArgs(args)
		if err := cmd.Execute(); err == nil {
			t.Errorf("%v: accepted", args)
		}
	}
	root := &cobra.Command{Use: "chanwatch", SilenceUsage: true, SilenceErrors: true}
	var ep string
	root.PersistentFlags().StringVar(&ep, "endpoints", "", "")
	root.AddCommand(NewCommand())
	root.SetOut(new(bytes.Buffer))
	root.SetErr(new(bytes.Buffer))
	root.SetArgs([]string{"bench", "--endpoints", "not-a-url"})
	err := root.Execute()
	if err == nil || !strings.Contains(err.Error(), "not-a-url") {
		t.Fatalf("bench under a root: %v, want the endpoint rejected by bench's own flag", err)
	}
}

func TestResultFinish(t *testing.T) {
	r := Result{N: 4, ChanwatchS: 2, BaselineS: 4, EtcdWrites: 6}
	r.finish("<= 1.0", 1.0, "x")
	if r.Ratio != 0.5 || r.EtcdWritesPerChannel != 1.5 || !r.Met() || r.Notes != "goal ratio <= 1.0: met; x" {
		t.Fatalf("%+v", r)
	}
	r = Result{N: 1, ChanwatchS: 3, BaselineS: 1}
	r.finish("<= 1.0", 1.0)
	if r.Met() || !strings.Contains(r.Notes, "NOT met") {
		t.Fatalf("%+v", r)
	}
	var buf bytes.Buffer
	if err := WriteJSON(&buf, nil); err != nil || strings.TrimSpace(buf.String()) != "[]" {
		t.Fatalf("WriteJSON(nil) = %q, %v", buf.String(), err)
	}
}

// The benchmarks run each scenario once per iteration at -scale (default
// 0.1, the quick sizes; -scale=1 for the full ones) and report its figures
// as metrics, so benchstat can compare commits:
//
//	go test -run '^$' -bench . -benchtime 1x -count 5 ./bench -args -scale 0.1
var benchScale = flag.Float64("scale", 0.1, "size factor of the scenarios run by the benchmarks")

var benchEnv *Env

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if benchEnv != nil {
		benchEnv.Close()
	}
	os.Exit(code)
}

func env(b *testing.B) *Env {
	if benchEnv == nil {
		e, err := NewEnv(Options{Scale: *benchScale})
		if err != nil {
			b.Fatal(err)
		}
		benchEnv = e
	}
	return benchEnv
}

func benchScenario(b *testing.B, id string) {
	e := env(b)
	var s Scenario
	for _, sc := range Scenarios(*benchScale) {
		if sc.ID == id {
			s = sc
		}
	}
	b.ResetTimer()
	var last Result
	for b.Loop() {
		r, err := s.Run(context.Background(), e)
		if err != nil {
			b.Fatal(err)
		}
		last = r
	}
	b.ReportMetric(last.ChanwatchS, "chanwatch-s")
	b.ReportMetric(last.BaselineS, "baseline-s")
	b.ReportMetric(last.Ratio, "ratio")
	b.ReportMetric(last.EtcdWritesPerChannel, "writes/ch")
	b.Logf("%s (%s): %s", last.Name, s.Sizes, last.Notes)
}

func BenchmarkB1Assign(b *testing.B)   { benchScenario(b, "B1") }
func BenchmarkB2Failover(b *testing.B) { benchScenario(b, "B2") }
func BenchmarkB3Recovery(b *testing.B) { benchScenario(b, "B3") }
func BenchmarkB4Backends(b *testing.B) { benchScenario(b, "B4") }
func BenchmarkB5Memory(b *testing.B)   { benchScenario(b, "B5") }
func BenchmarkB6Growth(b *testing.B)   { benchScenario(b, "B6") }
func BenchmarkB7Writes(b *testing.B)   { benchScenario(b, "B7") }
func BenchmarkB8Handoff(b *testing.B)  { benchScenario(b, "B8") }
func BenchmarkB9Drain(b *testing.B)    { benchScenario(b, "B9") }
func BenchmarkB10Rolling(b *testing.B) { benchScenario(b, "B10") }

// TestScaleSmoke runs B12 (the scale run, not in the default set) through
// the command at a tiny size and checks that every figure it promises is
// there and sane: placement and B1 rates, cold start against a raw list,
// heap, a failover, etcd's database size before and after defragmenting.
func TestScaleSmoke(t *testing.T) {
	out := filepath.Join(t.TempDir(), "s.json")
	cmd := NewCommand()
	var stdout bytes.Buffer
	cmd.SetOut(&stdout)
	cmd.SetErr(&stdout)
	cmd.SetArgs([]string{"--run", "B12", "--scale", "0.002", "--json", out, "-v"})
	if err := cmd.ExecuteContext(context.Background()); err != nil {
		t.Fatalf("bench: %v\n%s", err, stdout.String())
	}
	t.Log(stdout.String())
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var objs []Result
	if err := json.Unmarshal(b, &objs); err != nil {
		t.Fatalf("JSON: %v\n%s", err, b)
	}
	if len(objs) != 1 || objs[0].Name != "B12 scale" || objs[0].N != 2000 {
		t.Fatalf("want one B12 result for 2,000 channels, got %s", b)
	}
	f := objs[0].Figures
	for _, k := range []string{"placement_channels_per_s", "b1_channels_per_s", "cold_start_s", "raw_list_s", "heap_bytes", "failover_s", "etcd_db_bytes"} {
		if !(f[k] > 0) {
			t.Errorf("figure %s = %v, want > 0 (%s)", k, f[k], b)
		}
	}
	if f["failover_channels"] < 1 || f["etcd_db_bytes_defragmented"] <= 0 || f["etcd_db_bytes_defragmented"] > f["etcd_db_bytes"] {
		t.Errorf("failover or database figures off: %v", f)
	}
}
