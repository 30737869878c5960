package nodewatch

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"go.uber.org/zap"
)

// Warm handoff (see Preparer): a node whose handler can prepare watches
// prepare/<id>/ besides channel/<id>/, runs Prepare for each ToPrepare
// request and answers Prepared or PrepareFailure by compare-and-swap on the
// request's mod revision. A request is the key's incarnation (its create
// revision); the coordinator withdraws it by deleting the key, in the same
// txn as the ToWatch when the move completes.

// prepEntry is one preparation of a channel on this incarnation. Fields
// other than ctx, cancel, done, key and createRev are guarded by inc.mu.
type prepEntry struct {
	name      string
	key       string
	createRev int64
	ctx       context.Context
	cancel    context.CancelFunc
	done      chan struct{} // closed once Prepare (and Unprepare, if due) returned
	handed    bool          // a Watch of the channel is about to take the preparation over
	kept      bool          // the preparation ended handed over, not Unprepared
}

// preparer returns the handler's Preparer, or nil.
func (n *Node) preparer() Preparer {
	p, _ := n.h.(Preparer)
	return p
}

// watchPrepares lists and watches the node's prepare prefix until the
// incarnation ends, then cancels every preparation. Any break of the watch
// re-lists: the prefix holds a handful of keys.
func (inc *incarnation) watchPrepares() {
	defer inc.pwg.Done()
	prefix := meta.NodePreparePrefix(inc.id)
	var retry backoff
	for inc.ctx.Err() == nil {
		items, rev, err := inc.n.b.List(inc.ctx, prefix)
		if err != nil {
			if inc.ctx.Err() == nil {
				inc.log.Info("prepare list failed", zap.Error(err))
			}
			_ = sleep(inc.ctx, inc.n.cfg.clock, max(retry.next(), minRetry))
			continue
		}
		inc.relistPrepares(items)
		wctx, cancel := context.WithCancel(inc.ctx)
		for resp := range inc.n.b.Watch(wctx, prefix, rev+1) {
			if resp.Err != nil {
				if inc.ctx.Err() == nil {
					inc.log.Info("prepare watch broken; re-listing", zap.Error(resp.Err))
				}
				break
			}
			retry.reset()
			for _, e := range resp.Events {
				inc.applyPrepare(e)
			}
		}
		cancel()
		if errors.Is(inc.ctx.Err(), context.Canceled) {
			break
		}
		_ = sleep(inc.ctx, inc.n.cfg.clock, retry.next())
	}
	inc.mu.Lock()
	for _, e := range inc.preps {
		e.cancel()
	}
	inc.mu.Unlock()
}

// relistPrepares withdraws the preparations whose key is gone and applies
// every listed key.
func (inc *incarnation) relistPrepares(items []kv.KeyValue) {
	listed := map[string]int64{}
	for _, it := range items {
		if _, name, err := meta.ParsePrepareKey(it.Key); err == nil {
			listed[name] = it.CreateRevision
		}
	}
	inc.mu.Lock()
	for name, e := range inc.preps {
		if listed[name] != e.createRev {
			e.cancel()
		}
	}
	inc.mu.Unlock()
	for _, it := range items {
		inc.applyPrepare(kv.Event{Type: kv.EventPut, KV: it})
	}
}

// applyPrepare handles one event under the prepare prefix.
func (inc *incarnation) applyPrepare(ev kv.Event) {
	id, name, err := meta.ParsePrepareKey(ev.KV.Key)
	if err != nil || id != inc.id {
		inc.log.Warn("skipping foreign key under prepare prefix", zap.String("key", ev.KV.Key), zap.Error(err))
		return
	}
	inc.mu.Lock()
	prev := inc.preps[name]
	if ev.Type == kv.EventDelete {
		if prev != nil {
			prev.cancel()
		}
		inc.mu.Unlock()
		return
	}
	if prev != nil && prev.createRev == ev.KV.CreateRevision {
		inc.mu.Unlock()
		return // our own answer or heartbeat, or a request we run already
	}
	inc.mu.Unlock()
	if ev.KV.CreateRevision < inc.node.CreateRevision() {
		return // made for an earlier holder of this node ID
	}
	info, err := meta.DecodePrepareInfo(ev.KV.Key, ev.KV.Value)
	if err != nil {
		inc.log.Warn("skipping corrupt prepare request", zap.String("key", ev.KV.Key), zap.Error(err))
		return
	}
	if info.State != meta.ToPrepare {
		return // an answer of an earlier incarnation of this node: the coordinator withdraws it
	}
	ctx, cancel := context.WithCancel(inc.ctx)
	e := &prepEntry{name: name, key: ev.KV.Key, createRev: ev.KV.CreateRevision, ctx: ctx, cancel: cancel, done: make(chan struct{})}
	inc.mu.Lock()
	if prev != nil {
		prev.cancel() // a newer request replaces it; it finishes first
	}
	inc.preps[name] = e
	inc.pwg.Add(1)
	inc.mu.Unlock()
	go inc.prepare(e, prev, info, ev.KV.ModRevision)
}

// prepare runs one preparation: Prepare, its answer, then, once the
// request ends, Unprepare unless a Watch took it over.
func (inc *incarnation) prepare(e *prepEntry, prev *prepEntry, info meta.ChannelInfo, rev int64) {
	defer inc.pwg.Done()
	defer close(e.done)
	defer func() {
		inc.mu.Lock()
		if inc.preps[e.name] == e {
			delete(inc.preps, e.name)
		}
		inc.mu.Unlock()
	}()
	if prev != nil {
		<-prev.done
	}
	log := inc.log.With(zap.String("channel", e.name), zap.Int64("prepare_revision", rev))
	h := inc.n.preparer()
	ran := e.ctx.Err() == nil
	if ran {
		log.Debug("preparing channel")
		c := &channel{name: e.name, key: e.key}
		last, cur := rev, info
		hb := &heartbeat{c: c, info: &cur, last: &last, lost: e.cancel}
		pctx := context.WithValue(e.ctx, callKey{}, callInfo{node: inc.id, info: info, known: true})
		err := inc.runCall(pctx, e.cancel, "Prepare", e.name, func(ctx context.Context) error {
			return h.Prepare(ctx, info)
		}, hb, log)
		if e.ctx.Err() == nil {
			ack := cur
			if err == nil {
				ack.State, ack.LastError = meta.Prepared, ""
			} else {
				ack.State, ack.LastError, ack.FailedNode = meta.PrepareFailure, meta.TruncateError(err.Error()), inc.id
			}
			if !inc.cas(c, last, ack, log) {
				log.Debug("prepare answer rejected: the request was withdrawn")
			}
		}
	}
	<-e.ctx.Done()
	if !ran {
		// Withdrawn before Prepare started (it waited for the channel's
		// previous preparation): nothing to hand over or unprepare.
		log.Debug("prepare request withdrawn before Prepare started")
		return
	}
	inc.mu.Lock()
	handed := e.handed
	e.kept = handed
	inc.mu.Unlock()
	if handed {
		log.Debug("preparation taken over by the channel's Watch")
		return
	}
	if inc.assigned(e.name) {
		// The request went in the txn that assigned the channel here: the
		// preparation is the assignment's now. Its Watch takes it over
		// (handOver); if no Watch follows, the channel's worker or the
		// incarnation's end unprepares it.
		inc.mu.Lock()
		inc.deferred[e.name] = true
		inc.mu.Unlock()
		log.Debug("preparation left to the channel's assignment")
		return
	}
	inc.unprepare(e.name, log)
}

// unprepare calls Handler.Unprepare for channel name.
func (inc *incarnation) unprepare(name string, log *zap.Logger) {
	h := inc.n.preparer()
	uctx := context.WithValue(inc.relCtx, callKey{}, callInfo{node: inc.id})
	if err := inc.call("Unprepare", name, func() error { return h.Unprepare(uctx, name) }); err != nil {
		log.Warn("unprepare failed", zap.Error(err))
	} else {
		log.Debug("preparation dropped")
	}
}

// unprepareLeft unprepares the preparations left to assignments that no
// Watch took over; the incarnation's end calls it, after every worker.
func (inc *incarnation) unprepareLeft() {
	inc.mu.Lock()
	left := slices.Sorted(maps.Keys(inc.deferred))
	clear(inc.deferred)
	inc.mu.Unlock()
	for _, name := range left {
		inc.unprepare(name, inc.log.With(zap.String("channel", name)))
	}
}

// assigned reports whether this node holds an assignment of channel name
// (its key under the node's prefix): the coordinator withdraws a prepare
// request in the txn that assigns the channel, and the two watches may
// deliver that txn in either order.
func (inc *incarnation) assigned(name string) bool {
	if inc.ctx.Err() != nil {
		return false
	}
	inc.mu.Lock()
	c := inc.chans[name]
	present := c != nil && c.present
	inc.mu.Unlock()
	if present {
		return true
	}
	cur, err := inc.readBack(inc.ctx, meta.ChannelKey(inc.id, name))
	return err == nil && cur != nil && cur.CreateRevision >= inc.node.CreateRevision()
}

// handOver ends a preparation of channel name before its assignment is
// acted on: it cancels Prepare, waits for it, and marks it taken over (no
// Unprepare). It reports whether a preparation is held for the caller
// (running, or left to the assignment): the caller's Watch takes it over,
// or, when the caller does not call Watch, it must unprepare it.
func (inc *incarnation) handOver(name string) bool {
	inc.mu.Lock()
	e := inc.preps[name]
	if e != nil {
		e.handed = true
		e.cancel()
	}
	inc.mu.Unlock()
	if e != nil {
		<-e.done
	}
	inc.mu.Lock()
	defer inc.mu.Unlock()
	held := inc.deferred[name] || (e != nil && e.kept)
	delete(inc.deferred, name)
	return held
}

// encodeFor encodes info as the value of key: a prepare value under
// prepare/, an assignment otherwise.
func encodeFor(key string, info meta.ChannelInfo) ([]byte, error) {
	if strings.HasPrefix(key, meta.PreparePrefix) {
		return meta.EncodePrepareInfo(info)
	}
	return meta.EncodeChannelInfo(info)
}
