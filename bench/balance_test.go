package bench

import (
	"context"
	"testing"
)

// B11 at full size: the policy alone, so it is exact and fast. Weighted
// reaches the goal with no constraint violated and within the budget;
// LeastLoaded (counts) does not, on the same input.
func TestBalanceQuality(t *testing.T) {
	r, err := Balance(context.Background(), 10000, 20)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(r.Notes)
	f := r.Figures
	if !r.Met() || r.Ratio > 1.10 {
		t.Fatalf("max/mean %.3f, goal <= 1.10: %s", r.Ratio, r.Notes)
	}
	budget := f["move_budget_per_round"]
	for _, p := range []string{"weighted", "least_loaded"} {
		if f[p+"_violations"] != 0 || f[p+"_moves_dropped"] != 0 {
			t.Errorf("%s: %v constraint violations, %v moves refused; want 0", p, f[p+"_violations"], f[p+"_moves_dropped"])
		}
		if f[p+"_moves"] > 2*budget || f[p+"_join_moves"] > 2*budget {
			t.Errorf("%s: %v and %v moves in two rounds of budget %v", p, f[p+"_moves"], f[p+"_join_moves"], budget)
		}
	}
	if f["weighted_min_mean_join_round2"] < 0.9 {
		t.Errorf("joined nodes left under-filled: min/mean %v", f["weighted_min_mean_join_round2"])
	}
	if f["least_loaded_max_mean_placed"] < 1.5 {
		t.Errorf("LeastLoaded max/mean %v: the input is not skewed enough to tell the policies apart", f["least_loaded_max_mean_placed"])
	}
	if f["weighted_spread_collections"] != 1 {
		t.Errorf("Weighted left %.1f%% of collections less spread over zones than they can be", 100*(1-f["weighted_spread_collections"]))
	}
	// The same input gives the same figures.
	again, err := Balance(context.Background(), 10000, 20)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range f {
		if again.Figures[k] != v {
			t.Errorf("%s: %v, then %v", k, v, again.Figures[k])
		}
	}
}
