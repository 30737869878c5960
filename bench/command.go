package bench

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// NewCommand returns the `bench` subcommand: it runs the scenarios on an
// embedded etcd (or --endpoints), prints a table, and with --json writes
// the results. It exits non-zero when a scenario fails to run, not when a
// goal is missed (the table says MISS).
//
// When it is added under a root command that has its own persistent
// --endpoints flag, its local --endpoints shadows it with the same meaning.
func NewCommand() *cobra.Command {
	var (
		quick      bool
		scale      float64
		jsonPath   string
		endpoints  string
		root       string
		only       string
		etcdBin    string
		noFsync    bool
		timeout    time.Duration
		cpuProfile string
		memProfile string
		verbose    bool
		contended  bool
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure placement, failover, recovery, backends, memory, growth and etcd writes against raw etcd",
		Long: "bench starts an embedded etcd (or uses --endpoints), runs the scenarios B1..B11 of docs/BENCHMARKS.md\n" +
			"and prints one row per scenario: chanwatch's time, the baseline measured in the same run on the\n" +
			"same server, their ratio against the goal, and the etcd write txns chanwatch made.\n" +
			"--quick runs every scenario at a tenth of its size. B4 runs bin/etcd (make etcd) as a 3-member cluster.",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("unexpected argument %q", args[0])
			}
			return nil
		},
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts := Options{Scale: scale, Root: root, EtcdBinary: etcdBin, UnsafeNoFsync: noFsync, Timeout: timeout, HeapProfile: memProfile}
			if quick {
				if cmd.Flags().Changed("scale") {
					return errors.New("--quick and --scale go one at a time")
				}
				opts.Scale = 0.1
			}
			if !(opts.Scale > 0 && opts.Scale <= 1) {
				return fmt.Errorf("--scale %v: want 0 < scale <= 1", opts.Scale)
			}
			if endpoints != "" {
				for _, ep := range strings.Split(endpoints, ",") {
					ep = strings.TrimSpace(ep)
					if u, err := url.Parse(ep); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
						return fmt.Errorf("--endpoints: %q is not a URL like http://127.0.0.1:2379", ep)
					}
					opts.Endpoints = append(opts.Endpoints, ep)
				}
			}
			out := cmd.OutOrStdout()
			opts.Warnings = cmd.ErrOrStderr()
			if verbose {
				opts.Progress = cmd.ErrOrStderr()
			}
			if v := os.Getenv("CHANWATCH_BENCH_LOG"); v != "" {
				lg, err := benchLogger(v)
				if err != nil {
					return err
				}
				opts.Logger = lg
			}
			if cpuProfile != "" {
				f, err := os.Create(cpuProfile)
				if err != nil {
					return err
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
				defer pprof.StopCPUProfile()
			}
			load := "quiet"
			if contended {
				stop, err := StartBusyLoops(BusyLoops)
				if err != nil {
					return err
				}
				defer stop()
				load = fmt.Sprintf("contended (%d busy loops beside it)", BusyLoops)
			}
			start := time.Now()
			rs, runErr := Run(cmd.Context(), opts, only)
			if len(rs) > 0 {
				fmt.Fprintf(out, "chanwatch bench: scale %g, %s, %s, %v\n", opts.Scale, where(opts), load, time.Since(start).Round(time.Second))
				if err := WriteTable(out, rs); err != nil {
					return err
				}
			}
			if jsonPath != "" && runErr == nil {
				if err := writeJSONFile(jsonPath, rs); err != nil {
					return err
				}
			}
			return runErr
		},
	}
	f := cmd.Flags()
	f.BoolVar(&quick, "quick", false, "run every scenario at a tenth of its size (under a minute)")
	f.Float64Var(&scale, "scale", 1, "size factor for every scenario, 0 < scale <= 1")
	f.StringVar(&jsonPath, "json", "", "write the results to this file as a JSON array, one object per scenario")
	f.StringVar(&endpoints, "endpoints", "", "comma-separated client URLs of an external etcd (default: start an embedded one)")
	f.StringVar(&root, "bench-root", "chanwatch-bench", "key prefix of the benchmark's data in etcd (deleted afterwards)")
	f.StringVar(&only, "run", "", "run only the scenarios whose ID or name matches this regular expression (e.g. 'B1|B2')")
	f.StringVar(&etcdBin, "etcd-bin", "", "etcd binary for B4's 3-member cluster (default: bin/etcd of the module, built if missing)")
	f.BoolVar(&noFsync, "unsafe-no-fsync", false, "turn fsync off in every store (faster on slow disks; not production-like)")
	f.DurationVar(&timeout, "timeout", 10*time.Minute, "give up a scenario after this long")
	f.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run to this file")
	f.StringVar(&memProfile, "memprofile", "", "write a heap profile (in-use space) to this file when B5 measures the coordinator's heap")
	f.BoolVarP(&verbose, "verbose", "v", false, "print each step to stderr as it runs")
	f.BoolVar(&contended, "contended", false, "run two busy loops (yes >/dev/null) beside the scenarios, as a CPU-bound neighbour would, so that a coordinator that burns CPU shows in the ratios")
	return cmd
}

func where(o Options) string {
	if len(o.Endpoints) > 0 {
		return "etcd at " + strings.Join(o.Endpoints, ",")
	}
	return "embedded etcd"
}

func writeJSONFile(path string, rs []Result) error {
	var w io.WriteCloser = os.Stdout
	if path != "-" {
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		w = f
	}
	if err := WriteJSON(w, rs); err != nil {
		w.Close()
		return err
	}
	if path == "-" {
		return nil
	}
	return w.Close()
}

// benchLogger is the logger CHANWATCH_BENCH_LOG asks for: a zap level
// ("debug", "info", "warn", "error") logs at that level to stderr; any
// other non-empty value is zap's development logger (debug).
func benchLogger(v string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(v)
	if err != nil {
		return zap.NewDevelopment()
	}
	cfg := zap.NewDevelopmentConfig()
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.DisableStacktrace = true
	return cfg.Build()
}
