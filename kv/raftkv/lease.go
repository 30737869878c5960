package raftkv

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	"go.uber.org/zap"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/memkv"
)

// Leases: grants and revokes go through the log; deadlines live only in
// the leader's memory (lessor), on its clock. Keep-alives go to the leader
// and are not logged. Expiry is the leader's decision, made while it has
// verified its leadership and written to the log (opExpire), so replicas
// never expire anything on their own clocks. A new leader gives every lease
// a full TTL from the moment it takes over, as etcd does: it cannot know
// how long ago the old leader last renewed them.

// Grant creates a lease with TTL max(ttl, WithMinLeaseTTL) and returns its
// ID, which is the log index of the grant: unique in the cluster forever.
// Errors: kv.ErrInvalidTTL for ttl <= 0; kv.ErrUnknownOutcome,
// kv.ErrUnavailable, ctx's error and kv.ErrClosed as for Txn.
func (n *Node) Grant(ctx context.Context, ttl time.Duration) (kv.LeaseID, error) {
	if ttl <= 0 {
		return kv.NoLease, fmt.Errorf("%w: %v", kv.ErrInvalidTTL, ttl)
	}
	res, err := n.propose(ctx, command{Op: opGrant, TTL: max(ttl, n.o.minLeaseTTL)})
	if err != nil {
		return kv.NoLease, err
	}
	return res.Lease, nil
}

// KeepAliveOnce renews the lease to its full TTL on the leader's clock and
// returns the TTL. It is not logged: if the leader changes, the new one
// renews every lease anyway. Errors: kv.ErrLeaseNotFound when the lease is
// gone; kv.ErrUnavailable, ctx's error, kv.ErrClosed.
func (n *Node) KeepAliveOnce(ctx context.Context, id kv.LeaseID) (time.Duration, error) {
	var ttl time.Duration
	err := n.onLeader(ctx, "keep-alive", func(ctx context.Context) error {
		t, err := n.keepAliveLocal(ctx, id)
		ttl = t
		return err
	}, func(ctx context.Context, leader string) error {
		resp, err := n.forward(ctx, leader, &rpcRequest{Method: rpcKeepAlive, Lease: id})
		if err == nil {
			ttl = resp.TTL
		}
		return retryable(ctx, err)
	})
	return ttl, err
}

// Revoke deletes the lease and, in one revision, its keys. Errors:
// kv.ErrLeaseNotFound when the lease is gone; others as for Txn.
func (n *Node) Revoke(ctx context.Context, id kv.LeaseID) error {
	_, err := n.propose(ctx, command{Op: opRevoke, Lease: id})
	return err
}

// TimeToLive returns the time left on the leader's clock before the lease
// expires. Errors: kv.ErrLeaseNotFound when the lease is gone;
// kv.ErrUnavailable, ctx's error, kv.ErrClosed.
func (n *Node) TimeToLive(ctx context.Context, id kv.LeaseID) (time.Duration, error) {
	var left time.Duration
	err := n.onLeader(ctx, "time-to-live", func(ctx context.Context) error {
		t, err := n.timeToLiveLocal(ctx, id)
		left = t
		return err
	}, func(ctx context.Context, leader string) error {
		resp, err := n.forward(ctx, leader, &rpcRequest{Method: rpcTimeToLive, Lease: id})
		if err == nil {
			left = resp.TTL
		}
		return retryable(ctx, err)
	})
	return left, err
}

// retryable turns a failed forwarded call of a request that may be
// repeated (a read, a keep-alive) into errNotLeader, so onLeader tries
// again, unless ctx is done.
func retryable(ctx context.Context, err error) error {
	var ce *callError
	if errors.As(err, &ce) && ctx.Err() == nil {
		return fmt.Errorf("%w: %w", errNotLeader, err)
	}
	return err
}

// leaseLocal returns the lease as of a linearizable read on this node,
// which must be the ready leader, with the term it leads in.
func (n *Node) leaseLocal(ctx context.Context, id kv.LeaseID) (memkv.LeaseInfo, uint64, error) {
	idx, err := n.readIndexLocal(ctx)
	if err != nil {
		return memkv.LeaseInfo{}, 0, err
	}
	term := n.readyTerm.Load()
	if err := n.fsm.waitApplied(ctx, n.ctx.Done(), idx); err != nil {
		return memkv.LeaseInfo{}, 0, err
	}
	info, ok := n.fsm.store.Lease(id)
	if !ok {
		return memkv.LeaseInfo{}, 0, fmt.Errorf("%w: %d", kv.ErrLeaseNotFound, id)
	}
	return info, term, nil
}

func (n *Node) keepAliveLocal(ctx context.Context, id kv.LeaseID) (time.Duration, error) {
	info, term, err := n.leaseLocal(ctx, id)
	if err != nil {
		return 0, err
	}
	if !n.lessor.renew(term, id, info.TTL) {
		return 0, fmt.Errorf("%w: lost leadership during keep-alive", errNotLeader)
	}
	return info.TTL, nil
}

func (n *Node) timeToLiveLocal(ctx context.Context, id kv.LeaseID) (time.Duration, error) {
	info, term, err := n.leaseLocal(ctx, id)
	if err != nil {
		return 0, err
	}
	left, ok := n.lessor.remaining(term, id, info.TTL)
	if !ok {
		return 0, fmt.Errorf("%w: lost leadership during time-to-live", errNotLeader)
	}
	return left, nil
}

// expireLoop proposes the expiry of every lease past its deadline, checking
// on every tick of the lease clock, until the term ends. A check that
// could not expire everything due is retried on real time, so that a fake
// clock that is not advanced again does not strand it.
func (n *Node) expireLoop(term uint64, tick clockwork.Ticker, stillLeading func() bool) {
	var retry <-chan time.Time
	for {
		changed := n.changedCh()
		select {
		case <-tick.Chan():
		case <-retry:
		case <-changed:
			if !stillLeading() {
				return
			}
			continue
		case <-n.ctx.Done():
			return
		}
		retry = nil
		if !stillLeading() {
			return
		}
		if !n.expireDue(term) {
			retry = time.After(n.o.leaseCheck)
		}
	}
}

// expireDue expires the leases past their deadline; false when some could
// not be expired now.
func (n *Node) expireDue(term uint64) bool {
	due := n.lessor.due(term, n.fsm.store.Leases())
	if len(due) == 0 {
		return true
	}
	// A deposed leader that has not noticed yet must not decide.
	if err := n.verifier.verify(n.ctx); err != nil {
		return false
	}
	ok := true
	for _, id := range due {
		if !n.lessor.stillDue(term, id) {
			continue // renewed meanwhile
		}
		_, err := n.applyLocal(n.ctx, command{Op: opExpire, Lease: id})
		switch {
		case err == nil:
			n.log.Debug("lease expired", zap.Int64("lease", int64(id)))
		case errors.Is(err, kv.ErrLeaseNotFound):
			// revoked meanwhile
		default:
			n.log.Warn("lease expiry not applied; will retry", zap.Int64("lease", int64(id)), zap.Error(err))
			ok = false
			continue
		}
		n.lessor.forget(term, id)
	}
	return ok
}

// lessor holds the lease deadlines of the leader for one term.
type lessor struct {
	clock clockwork.Clock

	mu        sync.Mutex
	term      uint64 // 0: not leading
	deadlines map[kv.LeaseID]time.Time
}

func newLessor(c clockwork.Clock) *lessor { return &lessor{clock: c} }

// takeover starts term with a full TTL from now for every lease.
func (l *lessor) takeover(term uint64, leases []memkv.LeaseInfo) {
	now := l.clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.term = term
	l.deadlines = make(map[kv.LeaseID]time.Time, len(leases))
	for _, li := range leases {
		l.deadlines[li.ID] = now.Add(li.TTL)
	}
}

// stop forgets the deadlines of term, if they are the current ones.
func (l *lessor) stop(term uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.term == term {
		l.term, l.deadlines = 0, nil
	}
}

// renew sets id's deadline to now + ttl. False when not leading in term.
func (l *lessor) renew(term uint64, id kv.LeaseID, ttl time.Duration) bool {
	now := l.clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.term != term || l.term == 0 {
		return false
	}
	l.deadlines[id] = now.Add(ttl)
	return true
}

// granted gives a lease just granted in the current term its deadline.
func (l *lessor) granted(id kv.LeaseID, ttl time.Duration) {
	now := l.clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.term != 0 {
		if _, ok := l.deadlines[id]; !ok {
			l.deadlines[id] = now.Add(ttl)
		}
	}
}

// remaining returns the time left on id (a full ttl when its deadline is
// not set yet). False when not leading in term.
func (l *lessor) remaining(term uint64, id kv.LeaseID, ttl time.Duration) (time.Duration, bool) {
	now := l.clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.term != term || l.term == 0 {
		return 0, false
	}
	d, ok := l.deadlines[id]
	if !ok {
		return ttl, true
	}
	return max(d.Sub(now), 0), true
}

// due returns, in ID order, the leases past their deadline. Leases it has
// no deadline for get a full TTL from now; deadlines of leases no longer in
// the store are dropped.
func (l *lessor) due(term uint64, leases []memkv.LeaseInfo) []kv.LeaseID {
	now := l.clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.term != term || l.term == 0 {
		return nil
	}
	var due []kv.LeaseID
	live := make(map[kv.LeaseID]struct{}, len(leases))
	for _, li := range leases {
		live[li.ID] = struct{}{}
		d, ok := l.deadlines[li.ID]
		if !ok {
			l.deadlines[li.ID] = now.Add(li.TTL)
			continue
		}
		if !now.Before(d) {
			due = append(due, li.ID)
		}
	}
	for id := range l.deadlines {
		if _, ok := live[id]; !ok {
			delete(l.deadlines, id)
		}
	}
	slices.Sort(due)
	return due
}

// stillDue reports whether id is still past its deadline in term.
func (l *lessor) stillDue(term uint64, id kv.LeaseID) bool {
	now := l.clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	d, ok := l.deadlines[id]
	return l.term == term && l.term != 0 && ok && !now.Before(d)
}

// forget drops id's deadline after its expiry was applied.
func (l *lessor) forget(term uint64, id kv.LeaseID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.term == term {
		delete(l.deadlines, id)
	}
}
