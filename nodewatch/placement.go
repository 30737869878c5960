package nodewatch

import (
	"context"
	"fmt"

	"github.com/chanwatch/chanwatch/meta"
)

// WithCapacity sets the capacity the node advertises in its session key
// (default, and 0: meta.DefaultCapacity = 1): how much load, in channel
// weights, it takes compared with other nodes. Only a weight-aware policy
// (channelmgr.Weighted) uses it. Finite, >= 0, at most meta.MaxCapacity.
func WithCapacity(c float64) Option { return func(cfg *config) { cfg.capacity = c } }

// WithLabels sets the labels the node advertises in its session key (zone,
// group, ...): a channel that requires labels (meta.ChannelSpec.Require)
// goes only to a node that carries them, and one that spreads over a label
// (meta.ChannelSpec.Spread) spreads over its values. Keys and values follow
// meta.ValidateLabels (build them with meta.ParseLabels or meta.NewLabels).
// The node keeps them for its whole life.
func WithLabels(labels meta.Labels) Option { return func(cfg *config) { cfg.labels = labels } }

func (c *config) validatePlacement() error {
	if c.loadEvery < 0 {
		return fmt.Errorf("load interval %v must be >= 0 (0: %v)", c.loadEvery, DefaultLoadInterval)
	}
	return meta.ValidateCapacity(c.capacity)
}

// sessionInfo is what the node advertises in each session key it creates.
func (n *Node) sessionInfo() meta.NodeSession {
	n.mu.Lock()
	defer n.mu.Unlock()
	return meta.NodeSession{Addr: n.cfg.addr, Version: n.cfg.version, Capacity: n.cfg.capacity, Labels: n.cfg.labels,
		Prepare: n.preparer() != nil}
}

// SetCapacity changes the capacity the node advertises, at once in its
// current session key (a guarded rewrite on the node's own lease) and in
// every later one. The coordinator's policy then balances to it. Errors:
// meta.ErrInvalidPlacement for a bad capacity (nothing changes), or the
// error of the rewrite (the next registration still uses c).
func (n *Node) SetCapacity(ctx context.Context, c float64) error {
	if err := meta.ValidateCapacity(c); err != nil {
		return fmt.Errorf("nodewatch: set capacity: %w", err)
	}
	n.mu.Lock()
	n.cfg.capacity = c
	inc := n.cur
	n.mu.Unlock()
	if inc == nil {
		return nil
	}
	if err := inc.node.SetCapacity(ctx, c); err != nil {
		return fmt.Errorf("nodewatch: set capacity: %w", err)
	}
	return nil
}
