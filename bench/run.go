package bench

import (
	"context"
	"fmt"
	"math"
	"regexp"
	"strings"
	"time"
)

// Scenario is one benchmark scenario at a given scale.
type Scenario struct {
	// ID is "B1".."B10"; Name is the Result's name.
	ID, Name string
	// Sizes describes the sizes at the scale it was made for.
	Sizes string
	// Run runs it on e.
	Run func(ctx context.Context, e *Env) (Result, error)
}

// explicit holds the scenarios that run only when --run names them, never
// in the default set: B12, the scale run (make bench-scale).
var explicit = map[string]bool{"B12": true}

// scaled returns full*scale rounded, at least lo.
func scaled(full int, scale float64, lo int) int {
	return max(lo, int(math.Round(float64(full)*scale)))
}

// nodesAt keeps node counts at their full size down to the quick scale
// (0.1) and shrinks them below it, so that the smoke test stays small.
func nodesAt(full int, scale float64, lo int) int {
	return min(full, scaled(full, scale*10, lo))
}

// rollingFull is B10's channel count at scale 1: the 10,000. A
// full B10 takes about 70 s on the quiet 2-core dev box, up to 4-5 minutes
// under load (mostly the balance onto each new node, 8 moves in flight at
// a time); --scale shrinks it with the rest (docs/BENCHMARKS.md).
const rollingFull = 10000

// Scenarios returns the scenarios at a scale: 1 is the full run
// (B1 10,000 channels on 100 nodes; B2 10,000 on 10; B3 and B5 100,000 on
// 1,000; B4 32,000 txns from 64 clients; B6 10k/100k/1M on 1,000 nodes;
// B7 1,000 on 10; B8 1,000 on 10 and at least 1,000 moves; B9 10,000 on
// 10; B10 rollingFull on 10; B11 10,000 weighted channels on 20 nodes,
// policy only), 0.1 the quick one (a tenth of every size).
func Scenarios(scale float64) []Scenario {
	b1c, b1n := scaled(10000, scale, 20), nodesAt(100, scale, 4)
	b2c, b2n := scaled(10000, scale, 20), nodesAt(10, scale, 3)
	b3c, b3n := scaled(100000, scale, 50), nodesAt(1000, scale, 5)
	b4t, b4c := scaled(32000, scale, 64), 64
	b6s, b6n := []int{scaled(10000, scale, 100), scaled(100000, scale, 1000), scaled(1000000, scale, 10000)}, nodesAt(1000, scale, 10)
	b7c, b7n := scaled(1000, scale, 20), nodesAt(10, scale, 4)
	b8c, b8n, b8m := scaled(1000, scale, 40), nodesAt(10, scale, 4), scaled(1000, scale, 20)
	b9c, b9n := scaled(10000, scale, 40), nodesAt(10, scale, 3)
	b10c, b10n := scaled(rollingFull, scale, 40), nodesAt(10, scale, 3)
	b11c, b11n := scaled(10000, scale, 200), 20
	b12c, b12n := scaled(1000000, scale, 200), scaled(10000, scale, 4)
	return []Scenario{
		{"B1", "B1 assign", fmt.Sprintf("%d channels, %d nodes", b1c, b1n),
			func(ctx context.Context, e *Env) (Result, error) { return Assign(ctx, e, b1c, b1n) }},
		{"B2", "B2 failover", fmt.Sprintf("%d channels, %d nodes", b2c, b2n),
			func(ctx context.Context, e *Env) (Result, error) { return Failover(ctx, e, b2c, b2n) }},
		{"B3", "B3 recovery", fmt.Sprintf("%d channels, %d nodes", b3c, b3n),
			func(ctx context.Context, e *Env) (Result, error) { return Recovery(ctx, e, b3c, b3n) }},
		{"B4", "B4 backends", fmt.Sprintf("%d txns, %d clients", b4t, b4c),
			func(ctx context.Context, e *Env) (Result, error) { return Backends(ctx, e, b4t, b4c) }},
		{"B5", "B5 memory", fmt.Sprintf("%d channels, %d nodes, %d B payload", b3c, b3n, memoryPayload),
			func(ctx context.Context, e *Env) (Result, error) { return Memory(ctx, e, b3c, b3n) }},
		{"B6", "B6 growth", fmt.Sprintf("%v channels, %d nodes", b6s, b6n),
			func(ctx context.Context, e *Env) (Result, error) { return Growth(ctx, e, b6s, b6n) }},
		{"B7", "B7 writes", fmt.Sprintf("%d channels, %d nodes", b7c, b7n),
			func(ctx context.Context, e *Env) (Result, error) { return Writes(ctx, e, b7c, b7n) }},
		{"B8", "B8 handoff", fmt.Sprintf("%d channels, %d nodes, >= %d moves", b8c, b8n, b8m),
			func(ctx context.Context, e *Env) (Result, error) { return Handoff(ctx, e, b8c, b8n, b8m) }},
		{"B9", "B9 drain", fmt.Sprintf("%d channels, %d nodes", b9c, b9n),
			func(ctx context.Context, e *Env) (Result, error) { return Drain(ctx, e, b9c, b9n) }},
		{"B10", "B10 rolling restart", fmt.Sprintf("%d channels, %d nodes", b10c, b10n),
			func(ctx context.Context, e *Env) (Result, error) { return RollingRestart(ctx, e, b10c, b10n) }},
		{"B11", "B11 balance", fmt.Sprintf("%d weighted channels, %d nodes (policy only)", b11c, b11n),
			func(ctx context.Context, _ *Env) (Result, error) { return Balance(ctx, b11c, b11n) }},
		{"B12", "B12 scale", fmt.Sprintf("%d channels, %d simulated nodes (make bench-scale)", b12c, b12n),
			func(ctx context.Context, e *Env) (Result, error) { return Scale(ctx, e, b12c, b12n) }},
	}
}

// Run starts an Env with opts, runs the scenarios chosen by the regular
// expression only (all when empty) in order, and returns their results. A
// scenario is chosen when only matches its whole ID ("B1" does not choose
// B10) or any part of its name after the ID ("drain"). It stops at the
// first scenario that fails, returning the results so far with the error.
func Run(ctx context.Context, opts Options, only string) ([]Result, error) {
	re, err := regexp.Compile(only)
	if err != nil {
		return nil, fmt.Errorf("bench: scenario filter: %w", err)
	}
	if err := opts.fill(); err != nil {
		return nil, err
	}
	chosen, err := choose(opts, re, only)
	if err != nil {
		return nil, err
	}
	e, err := NewEnv(opts)
	if err != nil {
		return nil, err
	}
	defer e.Close()
	var out []Result
	for _, s := range chosen {
		fmt.Fprintf(opts.Progress, "%s (%s)\n", s.Name, s.Sizes)
		sctx, cancel := context.WithTimeout(ctx, opts.Timeout)
		start := time.Now()
		r, err := s.Run(sctx, e)
		cancel()
		if err != nil {
			return out, fmt.Errorf("%s: %w", s.Name, err)
		}
		fmt.Fprintf(opts.Progress, "  done in %v: ratio %.3f\n", time.Since(start).Round(time.Millisecond), r.Ratio)
		out = append(out, r)
	}
	return out, nil
}

// choose returns the scenarios only selects (see Run), and says on
// opts.Warnings which of the default set this binary cannot run.
func choose(opts Options, re *regexp.Regexp, only string) ([]Scenario, error) {
	whole := regexp.MustCompile("^(?:" + only + ")$")
	var chosen []Scenario
	for _, s := range Scenarios(opts.Scale) {
		if only == "" && s.ID == "B4" && StartRaft == nil {
			// The default set runs what this binary can; asked for by
			// name (--run B4), B4 fails and says why.
			fmt.Fprintf(opts.Warnings, "%s: not run: this binary was built without the raft backend (build with -tags raft; make bench does)\n", s.Name)
			continue
		}
		if (only == "" && !explicit[s.ID]) || (only != "" && (whole.MatchString(s.ID) || re.MatchString(strings.TrimPrefix(s.Name, s.ID+" ")))) {
			chosen = append(chosen, s)
		}
	}
	if len(chosen) == 0 {
		return nil, fmt.Errorf("bench: no scenario matches %q", only)
	}
	return chosen, nil
}
