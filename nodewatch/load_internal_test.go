package nodewatch

import "testing"

func TestLoadsMovedHysteresis(t *testing.T) {
	last := map[string]float64{"a": 10, "b": 2}
	for _, tc := range []struct {
		cur  map[string]float64
		want bool
	}{
		{map[string]float64{"a": 10, "b": 2}, false},
		{map[string]float64{"a": 10.9, "b": 1.85}, false}, // within 10%
		{map[string]float64{"a": 11.2, "b": 2}, true},     // a moved 10.7% of 11.2
		{map[string]float64{"a": 10}, false},              // b left: not worth a write
		{map[string]float64{"a": 10, "b": 2, "c": 0}, true},
		{map[string]float64{"a": 0, "b": 2}, true},
	} {
		if got := loadsMoved(last, tc.cur); got != tc.want {
			t.Errorf("loadsMoved(%v, %v) = %v, want %v", last, tc.cur, got, tc.want)
		}
	}
	if !loadsMoved(nil, map[string]float64{"a": 1}) || loadsMoved(nil, nil) {
		t.Error("first report")
	}
}
