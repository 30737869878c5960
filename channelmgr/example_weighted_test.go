package channelmgr_test

import (
	"fmt"

	"github.com/chanwatch/chanwatch/channelmgr"
	"github.com/chanwatch/chanwatch/meta"
)

// Weighted places by utilisation (sum of weights / capacity) under the
// channels' constraints: the ingest channels only go to the node with
// group=ingest, the channels of collection 2 spread over the zones, and the
// capacity-2 node takes about twice the load of the others. Use it with
// channelmgr.WithPolicy(channelmgr.Weighted()).
func ExampleWeighted() {
	nodes := []channelmgr.NodeLoad{
		{ID: 1, Capacity: 1, Labels: meta.MustLabels("zone=a")},
		{ID: 2, Capacity: 2, Labels: meta.MustLabels("zone=b", "group=ingest")},
		{ID: 3, Capacity: 1, Labels: meta.MustLabels("zone=c")},
	}
	ingest := meta.MustLabels("group=ingest")
	chs := []channelmgr.Channel{
		{Name: "ingest-0", CollectionID: 1, Weight: 3, Require: ingest},
		{Name: "ingest-1", CollectionID: 1, Weight: 1, Require: ingest},
		{Name: "search-0", CollectionID: 2, Weight: 2, Spread: "zone"},
		{Name: "search-1", CollectionID: 2, Weight: 2, Spread: "zone"},
		{Name: "search-2", CollectionID: 2, Weight: 2, Spread: "zone"},
		{Name: "small-0", CollectionID: 3, Weight: 1},
		{Name: "small-1", CollectionID: 3, Weight: 1},
	}
	p := channelmgr.Weighted()
	got := p.Place(chs, nodes)
	for i, c := range chs {
		fmt.Printf("%s -> node %d\n", c.Name, got[i])
		nodes[indexOf(nodes, got[i])].Channels = append(nodes[indexOf(nodes, got[i])].Channels, c)
	}
	for _, n := range nodes {
		fmt.Printf("node %d: load %.0f, capacity %.0f, utilisation %.2f\n", n.ID, n.Load(), n.Capacity, n.Utilisation())
	}
	fmt.Println("balance moves:", len(p.Balance(nodes, 8)))
	// Output:
	// ingest-0 -> node 2
	// ingest-1 -> node 2
	// search-0 -> node 1
	// search-1 -> node 3
	// search-2 -> node 2
	// small-0 -> node 1
	// small-1 -> node 3
	// node 1: load 3, capacity 1, utilisation 3.00
	// node 2: load 6, capacity 2, utilisation 3.00
	// node 3: load 3, capacity 1, utilisation 3.00
	// balance moves: 0
}

func indexOf(nodes []channelmgr.NodeLoad, id int64) int {
	for i, n := range nodes {
		if n.ID == id {
			return i
		}
	}
	return -1
}
