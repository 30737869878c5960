package audit

import (
	"context"
	"fmt"
	"time"

	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/nodewatch"
)

// PreparingHandler is a RecordingHandler with the warm-handoff capability
// (nodewatch.Preparer): a node running it advertises Prepare. It records
// every Prepare and Unprepare in the Recorder, which checks that a process
// never prepares a channel it runs (a preparation is not ownership). By
// default Prepare succeeds at once; FailPrepare and PrepareUntilCancel
// script it per channel ("" for every channel).
type PreparingHandler struct {
	*RecordingHandler
}

var _ nodewatch.Preparer = (*PreparingHandler)(nil)

// Preparing returns h with the Preparer capability; both record into the
// same Recorder under the same process name and share their scripts.
func (h *RecordingHandler) Preparing() *PreparingHandler { return &PreparingHandler{h} }

// FailPrepare makes the next n Prepare calls of ch fail (n < 0: always).
func (h *PreparingHandler) FailPrepare(ch string, n int) {
	h.edit(ch, func(s *script) { s.failPrepare = n })
}

// PrepareUntilCancel makes Prepare of ch return only when its ctx ends,
// reporting progress every `every` of the clock (0: never, a preparation
// that looks stuck).
func (h *PreparingHandler) PrepareUntilCancel(ch string, every time.Duration) {
	h.edit(ch, func(s *script) { s.prepareHang, s.prepareEvery = true, every })
}

// HoldPrepare makes Prepare of ch wait, without reporting progress, until
// done is called (it then succeeds) or its ctx ends.
func (h *PreparingHandler) HoldPrepare(ch string) (done func()) {
	h.mu.Lock()
	g := h.gate()
	h.mu.Unlock()
	h.edit(ch, func(s *script) { s.prepareGate = g })
	return closer(g)
}

// Prepare records the call and runs the channel's script.
func (h *PreparingHandler) Prepare(ctx context.Context, info meta.ChannelInfo) (err error) {
	id := h.id()
	if !h.rec.prepareStart(h.node, id, info) {
		return errCrashed
	}
	defer func() { h.rec.logEvent(h.node, id, info.Name, PrepareEnd, err) }()
	h.mu.Lock()
	var s script
	if p := h.scriptFor(info.Name); p != nil {
		s = *p
		if p.failPrepare > 0 {
			p.failPrepare--
		}
	}
	h.mu.Unlock()
	switch {
	case s.failPrepare != 0:
		return fmt.Errorf("%w: Prepare(%s)", ErrInjected, info.Name)
	case s.prepareHang:
		return h.busy(ctx, 0, s.prepareEvery, 0)
	case s.prepareGate != nil:
		select {
		case <-s.prepareGate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Unprepare records the call.
func (h *PreparingHandler) Unprepare(_ context.Context, ch string) error {
	h.rec.logEvent(h.node, h.id(), ch, UnprepareEnd, nil)
	return nil
}

// prepareStart logs a Prepare start and checks that the process does not
// run the channel. It returns false when the process is dead.
func (r *Recorder) prepareStart(node string, nodeID int64, info meta.ChannelInfo) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.dead[node] {
		return false
	}
	e := r.logLocked(HandlerEvent{Node: node, NodeID: nodeID, Channel: info.Name, Kind: PrepareStart})
	if iv := r.open[info.Name][node]; iv != nil {
		r.violate("prepare: %s prepares %s while it runs it (since #%d): %v", node, info.Name, iv.StartSeq, e)
	}
	if info.AssignRevision != 0 {
		r.violate("prepare: %s got a fencing token %d for a preparation of %s: %v", node, info.AssignRevision, info.Name, e)
	}
	return true
}

// logEvent logs one event that checks nothing.
func (r *Recorder) logEvent(node string, nodeID int64, ch string, kind HandlerEventKind, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logLocked(HandlerEvent{Node: node, NodeID: nodeID, Channel: ch, Kind: kind, Err: err})
}
