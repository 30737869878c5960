package nodewatch

import (
	"github.com/prometheus/client_golang/prometheus"
)

// The values of chanwatch_node_channels' state label, each exported from
// start (at zero).
var channelStates = []string{"watching", "running", "releasing", "unreleased"}

// collector exports the node's state, read at scrape time, so no code
// path has to keep a gauge in step.
type collector struct {
	n         *Node
	channels  *prometheus.Desc
	sessionUp *prometheus.Desc
	id        *prometheus.Desc
}

func newCollector(n *Node) *collector {
	return &collector{
		n: n,
		channels: prometheus.NewDesc("chanwatch_node_channels",
			"Channels of this node by state: watching (a Watch call or its acknowledgement is in progress), "+
				"running (Watch succeeded and was acknowledged; not released), releasing (a Release call is in progress), "+
				"unreleased (the last Release failed: the handler may still hold the channel; counted once, "+
				"whatever its other state).",
			[]string{"state"}, nil),
		sessionUp: prometheus.NewDesc("chanwatch_node_session_up",
			"1 while the node is registered and serves its assignments on a live session; 0 before it registers, "+
				"between a session loss and the next registration, and after it stops.",
			nil, nil),
		id: prometheus.NewDesc("chanwatch_node_id",
			"The node's current ID (its registration; a new one after each session loss); 0 before the first registration.",
			nil, nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.channels
	ch <- c.sessionUp
	ch <- c.id
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counts := c.n.channelCounts()
	for _, s := range channelStates {
		ch <- prometheus.MustNewConstMetric(c.channels, prometheus.GaugeValue, float64(counts[s]), s)
	}
	c.n.mu.Lock()
	up, id := 0.0, float64(c.n.id)
	if c.n.cur != nil && c.n.cur.sess.Err() == nil {
		up = 1
	}
	c.n.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(c.sessionUp, prometheus.GaugeValue, up)
	ch <- prometheus.MustNewConstMetric(c.id, prometheus.GaugeValue, id)
}

// channelCounts counts the node's channels by the states of
// chanwatch_node_channels.
func (n *Node) channelCounts() map[string]int {
	counts := map[string]int{}
	n.mu.Lock()
	inc := n.cur
	counts["unreleased"] = len(n.held)
	n.mu.Unlock()
	if inc == nil {
		return counts
	}
	inc.mu.Lock()
	defer inc.mu.Unlock()
	for _, c := range inc.chans {
		switch {
		case c.phase != "":
			counts[c.phase]++
		case c.watched:
			counts["running"]++
		}
	}
	return counts
}
