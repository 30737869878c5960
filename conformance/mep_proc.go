package conformance

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
)

// procRole says whose writes a procKV checks.
type procRole int

const (
	roleNode procRole = iota + 1
	roleCoord
)

// hanger is memkv's fault hook: calls on the handle block until release.
type hanger interface{ Hang() (release func()) }

// procKV is the handle of one simulated process: a kv.Backend from Env.Open
// with the faults the MEP scenarios inject and the write checks they make.
//
//   - Partition: every call blocks until Heal or its context ends. On a
//     memkv handle it uses memkv's own Hang; on other backends the wrapper
//     blocks calls itself (not applied; a blocked Txn fails with
//     kv.ErrUnknownOutcome) and holds back the events of open watches.
//   - WatchesDown: open watches end with kv.ErrUnavailable and new ones
//     deliver nothing until WatchesUp, then start from the revision they
//     asked for, which may have been compacted meanwhile: a watch that is
//     down while other calls work.
//   - Coordinator writes must carry the leadership guard and land within
//     that leadership; node writes to channel/ must be compare-and-swaps on
//     the key's mod revision, under a prefix of a node ID this process
//     registered. Violations go to the Checker.
type procKV struct {
	kv.Backend
	name string
	role procRole
	chk  *Checker

	mu        sync.Mutex
	release   func()        // memkv hang in force
	watchHeld chan struct{} // with release: open watches held, closed by Heal
	hung      chan struct{} // wrapper hang in force: closed by Heal
	down      chan struct{} // watches down: closed by WatchesUp
	watches   map[*procWatch]struct{}
	nodeIDs   map[int64]bool
	closed    bool
	closedCh  chan struct{}

	// writesLeft > 0: the handle closes itself (a crash) right after that
	// many more successful write txns.
	writesLeft atomic.Int64
	// compacted counts watches this handle saw end with ErrCompacted.
	compacted atomic.Int64
	// ambiguous are one-shot faults: see Ambiguous.
	ambiguous []ambiguity
}

// ambiguity is one pending Ambiguous fault.
type ambiguity struct {
	match func(call string, t kv.Txn) bool
	then  func()
}

// Ambiguous makes the next call that match accepts ("txn" with its Txn, or
// "revoke" with an empty one) apply, then run then (if not nil), then fail
// with an error wrapping kv.ErrUnknownOutcome: a connection that breaks
// after the request went out. Faults queue; each fires once.
func (p *procKV) Ambiguous(match func(call string, t kv.Txn) bool, then func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ambiguous = append(p.ambiguous, ambiguity{match: match, then: then})
}

// takeAmbiguous pops the first pending fault that matches, if any, runs
// its then and returns the error the call must answer (nil: none).
func (p *procKV) takeAmbiguous(call string, t kv.Txn) error {
	p.mu.Lock()
	var hit *ambiguity
	for i, a := range p.ambiguous {
		if a.match(call, t) {
			hit = &a
			p.ambiguous = append(p.ambiguous[:i:i], p.ambiguous[i+1:]...)
			break
		}
	}
	p.mu.Unlock()
	if hit == nil {
		return nil
	}
	if hit.then != nil {
		hit.then()
	}
	return fmt.Errorf("conformance: %s applied, then the connection broke: %w", call, kv.ErrUnknownOutcome)
}

// crashAfterWrites makes the process crash right after n more successful
// write txns: a crash between the sub-txns of a batch.
func (p *procKV) crashAfterWrites(n int64) { p.writesLeft.Store(n) }

type procWatch struct{ kill chan struct{} }

func newProcKV(b kv.Backend, name string, role procRole, chk *Checker) *procKV {
	return &procKV{Backend: b, name: name, role: role, chk: chk,
		watches: make(map[*procWatch]struct{}), nodeIDs: make(map[int64]bool), closedCh: make(chan struct{})}
}

// Partition cuts the process off the store until Heal.
func (p *procKV) Partition() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.release != nil || p.hung != nil {
		return
	}
	if h, ok := p.Backend.(hanger); ok {
		p.release = h.Hang()
		// memkv's hang holds new watches only: hold the open ones here.
		p.watchHeld = make(chan struct{})
		return
	}
	p.hung = make(chan struct{})
}

// holdWatch blocks a watch response while a memkv partition is in force;
// false when ctx ended or the handle closed first.
func (p *procKV) holdWatch(ctx context.Context) bool {
	p.mu.Lock()
	h := p.watchHeld
	p.mu.Unlock()
	if h == nil {
		return true
	}
	select {
	case <-h:
		return true
	case <-p.closedCh:
		return false
	case <-ctx.Done():
		return false
	}
}

// Heal ends a Partition.
func (p *procKV) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.release != nil {
		p.release()
		p.release = nil
	}
	if p.watchHeld != nil {
		close(p.watchHeld)
		p.watchHeld = nil
	}
	if p.hung != nil {
		close(p.hung)
		p.hung = nil
	}
}

// WatchesDown ends every open watch and holds new ones until WatchesUp.
func (p *procKV) WatchesDown() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down == nil {
		p.down = make(chan struct{})
	}
	for w := range p.watches {
		close(w.kill)
		delete(p.watches, w)
	}
}

// WatchesUp lets held watches start.
func (p *procKV) WatchesUp() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down != nil {
		close(p.down)
		p.down = nil
	}
}

// Close closes the underlying handle (a crash when done first).
func (p *procKV) Close() error {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		close(p.closedCh)
	}
	p.mu.Unlock()
	return p.Backend.Close()
}

// cutOff reports whether the process is partitioned from the store or its
// handle is closed.
func (p *procKV) cutOff() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.release != nil || p.hung != nil || p.closed
}

// gate blocks while the wrapper's own partition is in force.
func (p *procKV) gate(ctx context.Context, write bool) error {
	p.mu.Lock()
	h := p.hung
	p.mu.Unlock()
	if h == nil {
		return nil
	}
	select {
	case <-h:
		return nil
	case <-p.closedCh:
		return kv.ErrClosed
	case <-ctx.Done():
		if write {
			return fmt.Errorf("conformance: partitioned write not applied: %w: %w", kv.ErrUnknownOutcome, ctx.Err())
		}
		return fmt.Errorf("conformance: partitioned: %w", ctx.Err())
	}
}

func (p *procKV) Get(ctx context.Context, key string) (kv.KeyValue, int64, error) {
	if err := p.gate(ctx, false); err != nil {
		return kv.KeyValue{}, 0, err
	}
	return p.Backend.Get(ctx, key)
}

func (p *procKV) List(ctx context.Context, prefix string) ([]kv.KeyValue, int64, error) {
	if err := p.gate(ctx, false); err != nil {
		return nil, 0, err
	}
	return p.Backend.List(ctx, prefix)
}

func (p *procKV) Grant(ctx context.Context, ttl time.Duration) (kv.LeaseID, error) {
	if err := p.gate(ctx, false); err != nil {
		return 0, err
	}
	return p.Backend.Grant(ctx, ttl)
}

func (p *procKV) KeepAliveOnce(ctx context.Context, id kv.LeaseID) (time.Duration, error) {
	if err := p.gate(ctx, false); err != nil {
		return 0, err
	}
	return p.Backend.KeepAliveOnce(ctx, id)
}

func (p *procKV) Revoke(ctx context.Context, id kv.LeaseID) error {
	if err := p.gate(ctx, true); err != nil {
		return err
	}
	if err := p.Backend.Revoke(ctx, id); err != nil {
		return err
	}
	return p.takeAmbiguous("revoke", kv.Txn{})
}

func (p *procKV) TimeToLive(ctx context.Context, id kv.LeaseID) (time.Duration, error) {
	if err := p.gate(ctx, false); err != nil {
		return 0, err
	}
	return p.Backend.TimeToLive(ctx, id)
}

func (p *procKV) Compact(ctx context.Context, rev int64) error {
	if err := p.gate(ctx, false); err != nil {
		return err
	}
	return p.Backend.Compact(ctx, rev)
}

func (p *procKV) Txn(ctx context.Context, t kv.Txn) (kv.TxnResponse, error) {
	if err := p.gate(ctx, true); err != nil {
		return kv.TxnResponse{}, err
	}
	resp, err := p.Backend.Txn(ctx, t)
	if err == nil && p.checkWrite(t, resp) && p.writesLeft.Load() > 0 && p.writesLeft.Add(-1) == 0 {
		_ = p.Close()
	}
	if err == nil && resp.Succeeded {
		if aerr := p.takeAmbiguous("txn", t); aerr != nil {
			return kv.TxnResponse{}, aerr
		}
	}
	return resp, err
}

// putsKey reports whether t's Then branch puts key, and returns the value.
func putsKey(t kv.Txn, key string) ([]byte, bool) {
	for _, o := range t.Then {
		if o.Type == kv.OpTypePut && o.Key == key {
			return o.Value, true
		}
	}
	return nil, false
}

// checkWrite checks a txn that ran against the process's write rules and
// reports whether it wrote.
func (p *procKV) checkWrite(t kv.Txn, resp kv.TxnResponse) bool {
	ops := t.Then
	if !resp.Succeeded {
		ops = t.Else
	}
	var writes []kv.Op
	for _, o := range ops {
		if o.IsWrite() {
			writes = append(writes, o)
		}
	}
	if len(writes) == 0 || p.chk == nil {
		return len(writes) > 0
	}
	switch p.role {
	case roleCoord:
		token, guarded := int64(0), false
		for _, c := range t.If {
			if c.Key == meta.CoordinatorKey && c.Target == kv.TargetCreateRevision && c.Result == kv.Equal {
				token, guarded = c.Num, true
			}
		}
		if !resp.Succeeded {
			guarded = false // an Else branch runs exactly when a compare failed
		}
		if guarded && token == 0 {
			// A campaign: creates the leader key, which is its own token.
			token = resp.Revision
		}
		if !guarded && resp.Succeeded && clearsLeaderKey(t, writes) {
			return true // a candidate clearing a corrupt leader key nobody repaired
		}
		if !guarded {
			p.chk.Report("fencing: coordinator %s wrote %s at revision %d without its leadership guard", p.name, opKeys(writes), resp.Revision)
			return true
		}
		p.chk.NoteCoordWrite(p.name, token, resp.Revision)
	case roleNode:
		for _, o := range writes {
			if id, err := meta.ParseNodeSessionKey(o.Key); err == nil && o.Type == kv.OpTypePut && resp.Succeeded {
				p.mu.Lock()
				p.nodeIDs[id] = true
				p.mu.Unlock()
				continue
			}
			var id int64
			var err error
			switch {
			case strings.HasPrefix(o.Key, meta.ChannelPrefix):
				id, _, err = meta.ParseChannelKey(o.Key)
			case strings.HasPrefix(o.Key, meta.PreparePrefix):
				// A node answers its prepare requests; only the
				// coordinator creates or withdraws them.
				id, _, err = meta.ParsePrepareKey(o.Key)
				if o.Type != kv.OpTypePut {
					p.chk.Report("node %s deleted prepare key %s at revision %d: only the coordinator withdraws requests", p.name, o.Key, resp.Revision)
				}
			default:
				continue
			}
			p.mu.Lock()
			own := err == nil && p.nodeIDs[id]
			p.mu.Unlock()
			if !own {
				p.chk.Report("node %s wrote %s (%v) at revision %d: not under the prefix of a node ID it registered", p.name, o.Key, o.Type, resp.Revision)
				continue
			}
			cas := false
			for _, c := range t.If {
				if c.Key == o.Key && c.Target == kv.TargetModRevision && c.Result == kv.Equal && c.Num > 0 {
					cas = true
				}
			}
			if !cas || !resp.Succeeded {
				p.chk.Report("node %s wrote %s at revision %d without a compare-and-swap on its mod revision", p.name, o.Key, resp.Revision)
			}
		}
	}
	return true
}

// clearsLeaderKey reports whether t only deletes the leader key, under a
// compare on its mod revision (session.Campaign's repair of a corrupt key).
func clearsLeaderKey(t kv.Txn, writes []kv.Op) bool {
	if len(writes) != 1 || writes[0].Type != kv.OpTypeDelete || writes[0].Key != meta.CoordinatorKey {
		return false
	}
	for _, c := range t.If {
		if c.Key == meta.CoordinatorKey && c.Target == kv.TargetModRevision && c.Result == kv.Equal && c.Num > 0 {
			return true
		}
	}
	return false
}

func opKeys(ops []kv.Op) string {
	keys := make([]string, 0, len(ops))
	for _, o := range ops {
		keys = append(keys, o.Type.String()+" "+o.Key)
	}
	if len(keys) > 4 {
		keys = append(keys[:4], fmt.Sprintf("... (%d ops)", len(ops)))
	}
	return strings.Join(keys, ", ")
}

// Watch forwards the underlying watch, subject to WatchesDown and to the
// wrapper's own partition.
func (p *procKV) Watch(ctx context.Context, prefix string, fromRev int64) kv.WatchChan {
	out := make(chan kv.WatchResponse)
	go func() {
		defer close(out)
		w := &procWatch{kill: make(chan struct{})}
		for {
			p.mu.Lock()
			down := p.down
			if down == nil {
				p.watches[w] = struct{}{}
			}
			p.mu.Unlock()
			if down == nil {
				break
			}
			select {
			case <-down:
			case <-ctx.Done():
				return
			}
		}
		defer func() {
			p.mu.Lock()
			delete(p.watches, w)
			p.mu.Unlock()
		}()
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		in := p.Backend.Watch(wctx, prefix, fromRev)
		dropped := kv.WatchResponse{Err: fmt.Errorf("%w: conformance: watch dropped", kv.ErrUnavailable)}
		for {
			select {
			case wr, ok := <-in:
				if !ok {
					return
				}
				if err := p.gate(ctx, false); err != nil {
					return
				}
				if !p.holdWatch(ctx) {
					return
				}
				if errors.Is(wr.Err, kv.ErrCompacted) {
					p.compacted.Add(1)
				}
				select {
				case out <- wr:
				case <-w.kill:
					p.send(ctx, out, dropped)
					return
				case <-ctx.Done():
					return
				}
				if wr.Err != nil {
					return
				}
			case <-w.kill:
				p.send(ctx, out, dropped)
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

func (p *procKV) send(ctx context.Context, out chan<- kv.WatchResponse, wr kv.WatchResponse) {
	select {
	case out <- wr:
	case <-ctx.Done():
	}
}
