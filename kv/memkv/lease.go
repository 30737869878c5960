package memkv

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"go.uber.org/zap"
)

// LeaseInfo describes a lease as the Store knows it: no deadline, since
// time belongs to the caller.
type LeaseInfo struct {
	ID  kv.LeaseID
	TTL time.Duration
	// Keys are the keys attached to the lease, sorted.
	Keys []string
}

// Grant creates lease id with the given TTL. It fails with
// kv.ErrInvalidTTL when ttl <= 0, ErrInvalidLeaseID when id <= 0,
// ErrLeaseExists when id is already granted, kv.ErrClosed after Close.
// Granting does not advance the revision.
func (s *Store) Grant(id kv.LeaseID, ttl time.Duration) error {
	if ttl <= 0 {
		return fmt.Errorf("%w: %v", kv.ErrInvalidTTL, ttl)
	}
	if id <= kv.NoLease {
		return fmt.Errorf("%w: %d", ErrInvalidLeaseID, id)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return kv.ErrClosed
	}
	if _, ok := s.leases[id]; ok {
		return fmt.Errorf("%w: %d", ErrLeaseExists, id)
	}
	s.leases[id] = &lease{ttl: ttl, keys: make(map[string]struct{})}
	return nil
}

// Revoke deletes lease id and, in one revision, every key attached to it
// (DELETE events in key order). It returns the revision after the revoke,
// which is unchanged when no key was attached. It fails with
// kv.ErrLeaseNotFound when the lease does not exist, kv.ErrClosed after
// Close.
func (s *Store) Revoke(id kv.LeaseID) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, kv.ErrClosed
	}
	l, ok := s.leases[id]
	if !ok {
		return 0, fmt.Errorf("%w: %d", kv.ErrLeaseNotFound, id)
	}
	delete(s.leases, id)
	if len(l.keys) == 0 {
		return s.rev, nil
	}
	keys := make([]string, 0, len(l.keys))
	for k := range l.keys {
		keys = append(keys, k)
	}
	slices.Sort(keys) // map order must not leak into the events
	s.beginRevLocked()
	for _, k := range keys {
		s.deleteLocked(k)
	}
	s.rev++
	s.broadcastLocked()
	return s.rev, nil
}

// Lease returns lease id, and false when it does not exist.
func (s *Store) Lease(id kv.LeaseID) (LeaseInfo, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	l, ok := s.leases[id]
	if !ok {
		return LeaseInfo{}, false
	}
	return l.info(id), true
}

// Leases returns every lease, sorted by ID.
func (s *Store) Leases() []LeaseInfo {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ids := s.leaseIDsLocked()
	out := make([]LeaseInfo, len(ids))
	for i, id := range ids {
		out[i] = s.leases[id].info(id)
	}
	return out
}

func (l *lease) info(id kv.LeaseID) LeaseInfo {
	keys := make([]string, 0, len(l.keys))
	for k := range l.keys {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return LeaseInfo{ID: id, TTL: l.ttl, Keys: keys}
}

// Grant creates a lease with exactly ttl (memkv has no minimum TTL); its
// deadline is the clock's now + ttl. kv.ErrInvalidTTL when ttl <= 0.
func (m *KV) Grant(ctx context.Context, ttl time.Duration) (kv.LeaseID, error) {
	if err := m.begin(ctx, false); err != nil {
		return 0, err
	}
	if ttl <= 0 {
		return 0, fmt.Errorf("%w: %v", kv.ErrInvalidTTL, ttl)
	}
	sh := m.sh
	sh.leaseMu.Lock()
	defer sh.leaseMu.Unlock()
	id := sh.nextLeaseID
	if err := sh.store.Grant(id, ttl); err != nil {
		return 0, err
	}
	sh.nextLeaseID++
	sh.deadlines[id] = sh.clock.Now().Add(ttl)
	sh.wakeExpiry()
	return id, nil
}

// KeepAliveOnce sets the lease's deadline to now + TTL and returns the TTL.
// kv.ErrLeaseNotFound when the lease is gone (revoked or expired).
func (m *KV) KeepAliveOnce(ctx context.Context, id kv.LeaseID) (time.Duration, error) {
	if err := m.begin(ctx, false); err != nil {
		return 0, err
	}
	sh := m.sh
	sh.leaseMu.Lock()
	defer sh.leaseMu.Unlock()
	now := sh.expireLocked()
	l, ok := sh.store.Lease(id)
	if !ok {
		return 0, fmt.Errorf("%w: %d", kv.ErrLeaseNotFound, id)
	}
	sh.deadlines[id] = now.Add(l.TTL)
	return l.TTL, nil
}

// Revoke deletes the lease and its keys in one revision.
// kv.ErrLeaseNotFound when the lease is gone.
func (m *KV) Revoke(ctx context.Context, id kv.LeaseID) error {
	if err := m.begin(ctx, true); err != nil {
		return err
	}
	sh := m.sh
	sh.leaseMu.Lock()
	defer sh.leaseMu.Unlock()
	sh.expireLocked()
	if _, err := sh.store.Revoke(id); err != nil {
		return err
	}
	delete(sh.deadlines, id)
	sh.autoCompact()
	return nil
}

// TimeToLive returns the lease's deadline minus the clock's now.
// kv.ErrLeaseNotFound when the lease is gone.
func (m *KV) TimeToLive(ctx context.Context, id kv.LeaseID) (time.Duration, error) {
	if err := m.begin(ctx, false); err != nil {
		return 0, err
	}
	sh := m.sh
	sh.leaseMu.Lock()
	defer sh.leaseMu.Unlock()
	now := sh.expireLocked()
	d, ok := sh.deadlines[id]
	if _, exists := sh.store.Lease(id); !ok || !exists {
		return 0, fmt.Errorf("%w: %d", kv.ErrLeaseNotFound, id)
	}
	return d.Sub(now), nil
}

// expire revokes, in ID order, every lease whose deadline has passed.
func (sh *shared) expire() {
	sh.leaseMu.Lock()
	defer sh.leaseMu.Unlock()
	sh.expireLocked()
}

// expireLocked is expire with leaseMu held. Lease calls run it under the
// same hold as their own work, so none acts on a lease past its deadline.
func (sh *shared) expireLocked() (now time.Time) {
	now = sh.clock.Now()
	var due []kv.LeaseID
	for id, d := range sh.deadlines {
		if !now.Before(d) {
			due = append(due, id)
		}
	}
	if len(due) == 0 {
		return now
	}
	slices.Sort(due)
	for _, id := range due {
		delete(sh.deadlines, id)
		rev, err := sh.store.Revoke(id)
		if err != nil {
			// Closed, or revoked directly on the Store: nothing to expire.
			sh.log.Debug("lease expiry: revoke failed", zap.Int64("lease", int64(id)), zap.Error(err))
			continue
		}
		sh.log.Debug("lease expired", zap.Int64("lease", int64(id)), zap.Int64("revision", rev))
	}
	sh.autoCompact()
	return now
}

// nextDeadline returns the earliest lease deadline, and false when there
// is no lease.
func (sh *shared) nextDeadline() (time.Time, bool) {
	sh.leaseMu.Lock()
	defer sh.leaseMu.Unlock()
	var next time.Time
	found := false
	for _, d := range sh.deadlines {
		if !found || d.Before(next) {
			next, found = d, true
		}
	}
	return next, found
}

// wakeExpiry makes the expiry loop recompute its timer (a new lease may
// expire before the one it waits for).
func (sh *shared) wakeExpiry() {
	select {
	case sh.wake <- struct{}{}:
	default:
	}
}

// expiryLoop revokes leases when their deadline passes on the clock, so a
// fake clock's Advance expires leases without any further call.
func (sh *shared) expiryLoop() {
	defer close(sh.loopDone)
	for {
		next, ok := sh.nextDeadline()
		var timer <-chan time.Time
		var t interface{ Stop() bool }
		if ok {
			now := sh.clock.Now()
			d := next.Sub(now)
			if d <= 0 {
				sh.expire()
				continue
			}
			ct := sh.clock.NewTimer(d)
			// A fake clock may have advanced between computing d and
			// arming the timer, which would then fire late: re-arm.
			if sh.clock.Since(now) > time.Millisecond {
				ct.Stop()
				continue
			}
			timer, t = ct.Chan(), ct
		}
		select {
		case <-timer:
			sh.expire()
		case <-sh.wake:
		case <-sh.stop:
			if t != nil {
				t.Stop()
			}
			return
		}
		if t != nil {
			t.Stop()
		}
	}
}
