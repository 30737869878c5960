package nodewatch

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/session"
	"github.com/jonboulle/clockwork"
	"go.uber.org/zap"
)

// endReason says why an incarnation stopped serving.
type endReason int

const (
	endCtx         endReason = iota + 1 // Run's ctx is done
	endSessionLost                      // the session ended (fenced, expired)
	endDrained                          // Stop: the prefix is empty
)

// incarnation is one registration: a session, a node ID, its prefix and
// the channels under it. A session loss ends it; the Node starts another.
type incarnation struct {
	n      *Node
	sess   *session.Session
	node   *session.Node
	id     int64
	prefix string
	log    *zap.Logger

	// ctx is cancelled when the incarnation ends: it parents every
	// assignment's ctx and bounds every write, so nothing is written after
	// a session loss. relCtx is never cancelled; Release runs on it.
	ctx    context.Context
	cancel context.CancelFunc
	relCtx context.Context

	acks  *acker         // sends the workers' compare-and-swaps, batched
	wg    sync.WaitGroup // workers, the acker and the load reporter
	mu    sync.Mutex
	chans map[string]*channel
	// preps are the preparations running or held (see prepare.go), and
	// pwg their goroutines and the prepare watch.
	preps map[string]*prepEntry
	pwg   sync.WaitGroup
	// deferred are the preparations whose request was withdrawn in the
	// txn that assigned the channel here: the assignment's Watch takes
	// them over (handOver), or they are unprepared.
	deferred map[string]bool
}

func newIncarnation(n *Node, sess *session.Session, node *session.Node) *incarnation {
	return &incarnation{
		n:      n,
		sess:   sess,
		node:   node,
		id:     node.ID(),
		prefix: meta.NodePrefix(node.ID()),
		log:    n.log.With(zap.Int64("node", node.ID())),
		chans:  make(map[string]*channel),
		preps:  make(map[string]*prepEntry),

		deferred: make(map[string]bool),
	}
}

func (inc *incarnation) running() []string {
	inc.mu.Lock()
	defer inc.mu.Unlock()
	var out []string
	for name, c := range inc.chans {
		if c.watched {
			out = append(out, name)
		}
	}
	return out
}

// serve lists and watches the prefix, dispatching events to the channel
// workers, until ctx is done, the session ends or a drain completes. It
// returns only after every channel is released.
func (inc *incarnation) serve(ctx context.Context) endReason {
	inc.ctx, inc.cancel = context.WithCancel(ctx)
	inc.acks = newAcker(inc.n.b)
	inc.wg.Add(2)
	go inc.reportLoads() // idle until the handler reports a load
	go func() {
		defer inc.wg.Done()
		inc.acks.run(inc.ctx)
	}()
	inc.relCtx = context.WithoutCancel(ctx)
	if inc.n.preparer() != nil {
		inc.pwg.Add(1)
		go inc.watchPrepares()
	}
	// A lost session cuts every pending call at once, even a hung one in
	// the dispatcher: nothing may be written after the fence.
	fenced := make(chan struct{})
	go func() {
		defer close(fenced)
		select {
		case <-inc.sess.Done():
			inc.cancel()
		case <-inc.ctx.Done():
		}
	}()
	why := inc.dispatch(ctx)
	inc.shutdown()
	<-fenced
	return why
}

// dispatch is the event loop. It never blocks on a worker.
func (inc *incarnation) dispatch(ctx context.Context) endReason {
	var (
		rev      int64 // the last revision applied to the view
		listed   bool
		wch      kv.WatchChan
		wcancel  context.CancelFunc = func() {}
		retry    backoff
		retryC   <-chan time.Time
		retryT   clockwork.Timer
		draining bool
	)
	defer func() {
		wcancel()
		if retryT != nil {
			retryT.Stop()
		}
	}()
	stopCh := inc.n.stopCh
	clock := inc.n.cfg.clock

	// arm schedules the next (re-)list or watch attempt.
	arm := func() {
		wch = nil
		d := retry.next()
		if d <= 0 {
			c := make(chan time.Time, 1)
			c <- clock.Now()
			retryC = c
			return
		}
		if retryT != nil {
			retryT.Stop()
		}
		retryT = clock.NewTimer(d)
		retryC = retryT.Chan()
	}
	arm()
	retry.reset()

	for {
		if draining && listed && inc.empty() {
			inc.log.Info("drained: no assignment left")
			return endDrained
		}
		select {
		case <-ctx.Done():
			return endCtx
		case <-inc.sess.Done():
			inc.log.Warn("session ended; releasing every channel", zap.Error(inc.sess.Err()))
			return endSessionLost
		case <-stopCh:
			stopCh = nil
			draining = true
			if err := inc.node.SetStopping(inc.ctx); err != nil {
				inc.log.Warn("mark stopping failed", zap.Error(err))
			}
		case <-retryC:
			retryC = nil
			if !listed {
				items, listRev, err := inc.n.b.List(inc.ctx, inc.prefix)
				if err != nil {
					inc.log.Warn("list failed", zap.Error(err))
					arm()
					continue
				}
				inc.reconcile(items, listRev)
				rev, listed = listRev, true
			}
			wcancel()
			wctx, cancel := context.WithCancel(inc.ctx)
			wcancel = cancel
			wch = inc.n.b.Watch(wctx, inc.prefix, rev+1)
		case resp, ok := <-wch:
			if !ok || resp.Err != nil {
				err := resp.Err
				if errors.Is(err, kv.ErrCompacted) {
					inc.log.Info("watch compacted; re-listing", zap.Int64("from", rev+1), zap.Error(err))
					listed = false
				} else if err != nil {
					inc.log.Info("watch broken; resuming", zap.Int64("from", rev+1), zap.Error(err))
				}
				arm()
				continue
			}
			retry.reset()
			for _, e := range resp.Events {
				inc.apply(e)
				rev = e.Revision()
			}
		}
	}
}

// apply dispatches one watch event.
func (inc *incarnation) apply(e kv.Event) {
	id, name, err := meta.ParseChannelKey(e.KV.Key)
	if err != nil || id != inc.id {
		inc.log.Warn("skipping foreign key under node prefix", zap.String("key", e.KV.Key), zap.Error(err))
		return
	}
	if e.Type == kv.EventDelete {
		inc.enqueue(name, event{kind: evDelete, rev: e.Revision()})
		return
	}
	if e.KV.CreateRevision < inc.node.CreateRevision() {
		// Made for an earlier holder of this node ID (the ID counter was
		// lost or reset): a dead node's key, which the coordinator moves.
		inc.log.Warn("skipping an assignment that predates this node's session",
			zap.String("key", e.KV.Key), zap.Int64("create_revision", e.KV.CreateRevision),
			zap.Int64("session_create_revision", inc.node.CreateRevision()))
		return
	}
	info, err := meta.DecodeChannelInfo(e.KV.Key, e.KV.Value)
	if err != nil {
		inc.log.Warn("skipping corrupt assignment", zap.String("key", e.KV.Key),
			zap.Int64("revision", e.Revision()), zap.Error(err))
		return
	}
	inc.enqueue(name, event{kind: evPut, rev: e.Revision(), info: info})
}

// reconcile applies a fresh listing at rev: keys that vanished are deleted
// locally, every listed key is replayed (workers skip what they have seen).
func (inc *incarnation) reconcile(items []kv.KeyValue, rev int64) {
	listed := make(map[string]bool, len(items))
	for _, it := range items {
		if _, name, err := meta.ParseChannelKey(it.Key); err == nil {
			listed[name] = true
		}
	}
	inc.mu.Lock()
	var gone []string
	for name, c := range inc.chans {
		if c.present && !listed[name] {
			gone = append(gone, name)
		}
	}
	inc.mu.Unlock()
	for _, name := range gone {
		inc.enqueue(name, event{kind: evDelete, rev: rev})
	}
	for _, it := range items {
		inc.apply(kv.Event{Type: kv.EventPut, KV: it})
	}
}

// empty reports whether no assignment is left under the prefix.
func (inc *incarnation) empty() bool {
	inc.mu.Lock()
	defer inc.mu.Unlock()
	for _, c := range inc.chans {
		if c.present {
			return false
		}
	}
	return true
}

// shutdown ends the incarnation: it cancels every assignment and bounds
// every pending write, then releases every channel still held, each on its
// own worker, and waits for all of them.
func (inc *incarnation) shutdown() {
	inc.cancel()
	// Preparations end first (Prepare's ctx derives from inc.ctx); each
	// unprepares what it held.
	inc.pwg.Wait()
	inc.mu.Lock()
	for _, c := range inc.chans {
		c.queue = append(c.queue[:0], event{kind: evShutdown})
		inc.startLocked(c)
	}
	inc.mu.Unlock()
	inc.wg.Wait()
	// Preparations left to assignments that never reached Watch.
	inc.unprepareLeft()
}
