package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Result is one scenario's outcome: the JSON object `chanwatch bench
// --json` writes per scenario.
type Result struct {
	// Name is the scenario, e.g. "B1 assign".
	Name string `json:"name"`
	// N is the scenario's size: channels (B1, B3, B5, B6), channels moved
	// (B2, B7) or txns (B4).
	N int `json:"n"`
	// ChanwatchS and BaselineS are the measured times in seconds (B4:
	// raftkv and etcd; B5: cold start and raw list; B6: one decision at
	// the largest and the smallest size).
	ChanwatchS float64 `json:"chanwatch_s"`
	BaselineS  float64 `json:"baseline_s"`
	// Ratio is the scenario's figure against its baseline; lower is
	// better everywhere (see Goal, and docs/BENCHMARKS.md per scenario).
	Ratio float64 `json:"ratio"`
	// EtcdWrites is the number of write txns chanwatch made during the
	// measurement (revision delta); EtcdWritesPerChannel divides it by N.
	EtcdWrites           int64   `json:"etcd_writes"`
	EtcdWritesPerChannel float64 `json:"etcd_writes_per_channel"`
	// Notes holds the details: the goal and whether it was met, secondary
	// figures, sizes.
	Notes string `json:"notes"`
	// Figures holds a scenario's secondary figures by name, for machines
	// (B11: max/mean per phase and policy, moves, violations); most
	// scenarios have none and leave it out.
	Figures map[string]float64 `json:"figures,omitempty"`

	// Goal is the target for Ratio (e.g. "<= 1.0"), GoalMax its bound.
	Goal    string  `json:"-"`
	GoalMax float64 `json:"-"`
}

// Met reports whether Ratio is within the goal.
func (r Result) Met() bool { return r.Ratio <= r.GoalMax }

// finish fills the derived fields: ratio (when not set), writes per
// channel, and the goal line in the notes.
func (r *Result) finish(goal string, max float64, notes ...string) {
	if r.Ratio == 0 && r.BaselineS > 0 {
		r.Ratio = r.ChanwatchS / r.BaselineS
	}
	if r.N > 0 {
		r.EtcdWritesPerChannel = float64(r.EtcdWrites) / float64(r.N)
	}
	r.Goal, r.GoalMax = goal, max
	verdict := "met"
	if !r.Met() {
		verdict = "NOT met"
	}
	all := append([]string{fmt.Sprintf("goal ratio %s: %s", goal, verdict)}, notes...)
	r.Notes = strings.Join(all, "; ")
}

// WriteJSON writes rs as a JSON array, one object per scenario.
func WriteJSON(w io.Writer, rs []Result) error {
	if rs == nil {
		rs = []Result{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rs)
}

// WriteTable writes rs as an aligned text table.
func WriteTable(w io.Writer, rs []Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tn\tchanwatch_s\tbaseline_s\tratio\tgoal\tetcd_writes\twrites/ch")
	for _, r := range rs {
		met := "ok"
		if !r.Met() {
			met = "MISS"
		}
		fmt.Fprintf(tw, "%s\t%d\t%.3f\t%.3f\t%.3f\t%s %s\t%d\t%.3f\n", r.Name, r.N, r.ChanwatchS, r.BaselineS,
			r.Ratio, r.Goal, met, r.EtcdWrites, r.EtcdWritesPerChannel)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range rs {
		if _, err := fmt.Fprintf(w, "%s: %s\n", r.Name, r.Notes); err != nil {
			return err
		}
	}
	return nil
}
