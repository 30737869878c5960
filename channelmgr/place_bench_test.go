package channelmgr

import (
	"fmt"
	"testing"
)

// BenchmarkPlaceLeastLoaded compares the heap placement with the scan it
// replaced (placeLeastLoadedScan), on one big collection (the scan's best
// case) and on many small ones over many nodes (B12's shape).
func BenchmarkPlaceLeastLoaded(b *testing.B) {
	for _, tc := range []struct {
		name            string
		nodes, channels int
		perCollection   int
	}{
		{"one-collection/1000-nodes/20000-channels", 1000, 20000, 20000},
		{"collections-of-8/10000-nodes/100000-channels", 10000, 100000, 8},
	} {
		nodes := make([]NodeLoad, tc.nodes)
		for i := range nodes {
			nodes[i].ID = int64(i + 1)
		}
		chs := make([]Channel, tc.channels)
		for i := range chs {
			chs[i] = Channel{Name: fmt.Sprintf("c%07d", i), CollectionID: int64(i / tc.perCollection)}
		}
		b.Run(tc.name+"/heap", func(b *testing.B) {
			for b.Loop() {
				placeLeastLoaded(chs, nodes)
			}
		})
		b.Run(tc.name+"/scan", func(b *testing.B) {
			for b.Loop() {
				placeLeastLoadedScan(chs, nodes)
			}
		})
	}
}
