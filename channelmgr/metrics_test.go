package channelmgr

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/chanwatch/chanwatch/kv/memkv"
)

// TestMetricLabelsExistFromStart: every known label value of a labelled
// metric is exported, at zero, before the coordinator has done anything,
// so alerts on rate() or on a state's count can match zero.
func TestMetricLabelsExistFromStart(t *testing.T) {
	store := memkv.New()
	defer store.Close()
	reg := prometheus.NewRegistry()
	if _, err := New(store.NewClient(), WithRegisterer(reg)); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]int{
		"chanwatch_coordinator_channels":              len(channelStates()),
		"chanwatch_coordinator_moves_started_total":   len(moveReasons),
		"chanwatch_coordinator_timeouts_total":        len(timeoutKinds),
		"chanwatch_coordinator_txns_total":            len(txnResults),
		"chanwatch_coordinator_corrupt_keys_total":    len(corruptPrefixes),
		"chanwatch_coordinator_pass_duration_seconds": 1,
	} {
		if n, err := testutil.GatherAndCount(reg, name); err != nil || n != want {
			t.Errorf("%s: %d series at start (err %v), want %d", name, n, err, want)
		}
	}
	if len(channelStates()) < 8 {
		t.Errorf("channel states %v: want remaining, unassigned and the six MEP states", channelStates())
	}
}
