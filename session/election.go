package session

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/jonboulle/clockwork"
	"go.uber.org/zap"
)

// Watch retry backoff after a broken watch (not after a compaction, which
// is answered by a read at once).
const (
	minWatchRetry = 50 * time.Millisecond
	maxWatchRetry = time.Second
)

// Leadership is a won election: while it lasts, the holder is the only
// coordinator, and Guard fences every write it makes.
type Leadership struct {
	b     kv.Backend
	s     *Session
	token int64
	val   []byte // the leader key's value as we wrote it
	log   *zap.Logger

	done     chan struct{}
	stopOnce sync.Once
	stop     chan struct{} // closed by Resign
	loopDone chan struct{}
}

// Campaign makes s's owner the coordinator, as etcd's concurrency.Election
// does, in one round trip per attempt:
//
//	If(CreateRevision(meta.CoordinatorKey) == 0).Then(Put(key, val, s.Lease())).Else(Get(key))
//
// If the key exists on s's own lease (an earlier attempt that returned an
// ambiguous error landed) the caller leads. Otherwise Campaign watches the
// key until it is deleted and tries again.
//
// A leader key that is corrupt — its value does not decode, or it is on no
// lease (written by hand), so it would never go away on its own — is not
// waited on forever: Campaign logs it, waits one session TTL on s's clock
// for it to change (a live holder repairs its own key within that time; see
// Leadership), then deletes it with a compare on its mod revision and
// campaigns again. A live but slow holder whose key is deleted this way
// loses leadership, and its guard keeps its later writes out.
//
// It returns when the caller leads;
// with an error wrapping ctx.Err() when ctx is done; with ErrSessionDone
// when s ends (it never waits on a dead session); or with the backend's
// error when a call fails (Campaign is idempotent: call it again).
func Campaign(ctx context.Context, b kv.Backend, s *Session, val meta.CoordSession) (*Leadership, error) {
	v, err := meta.EncodeCoordSession(val)
	if err != nil {
		return nil, err
	}
	key := meta.CoordinatorKey
	var lastLeader int64 // the leader we last said we stand by for
	for {
		if err := sessionDone(s); err != nil {
			return nil, err
		}
		resp, err := b.Txn(ctx, kv.Txn{
			If:   []kv.Cmp{kv.CmpMissing(key)},
			Then: []kv.Op{kv.OpPutLease(key, v, s.Lease())},
			Else: []kv.Op{kv.OpGet(key)},
		})
		if err != nil {
			if errors.Is(err, kv.ErrLeaseNotFound) {
				return nil, fmt.Errorf("%w: campaign: %w", ErrSessionDone, err)
			}
			if derr := sessionDone(s); derr != nil {
				return nil, derr
			}
			return nil, fmt.Errorf("session: campaign: %w", err)
		}
		var token int64
		if resp.Succeeded {
			token = resp.Revision
		} else {
			cur := resp.Responses[0].KV
			if cur == nil {
				continue // the compare saw the key, so this cannot happen; re-read
			}
			if why := corruptLeaderKey(*cur); why != "" && cur.Lease != s.Lease() {
				if err := clearCorruptLeader(ctx, b, s, *cur, why, resp.Revision+1); err != nil {
					return nil, err
				}
				continue
			}
			if cur.Lease != s.Lease() {
				leader := "?"
				if v, err := meta.DecodeCoordSession(cur.Key, cur.Value); err == nil {
					leader = v.ID
				}
				if cur.CreateRevision != lastLeader {
					lastLeader = cur.CreateRevision
					s.log.Info("standing by: another coordinator leads", zap.String("leader", leader),
						zap.Int64("leader_token", cur.CreateRevision))
				}
				if err := waitGone(ctx, b, s, key, cur.CreateRevision, resp.Revision+1); err != nil {
					return nil, err
				}
				continue
			}
			token = cur.CreateRevision
		}
		l := &Leadership{
			b:        b,
			s:        s,
			token:    token,
			val:      v,
			log:      s.log.With(zap.Int64("token", token)),
			done:     make(chan struct{}),
			stop:     make(chan struct{}),
			loopDone: make(chan struct{}),
		}
		go l.monitor(resp.Revision + 1)
		l.log.Info("elected coordinator")
		return l, nil
	}
}

// corruptLeaderKey says why cur cannot be a live leader's key ("" when it
// can): a value that does not decode, or no lease.
func corruptLeaderKey(cur kv.KeyValue) string {
	if _, err := meta.DecodeCoordSession(cur.Key, cur.Value); err != nil {
		return err.Error()
	}
	if cur.Lease == kv.NoLease {
		return "the leader key is on no lease: it would never expire"
	}
	return ""
}

// clearCorruptLeader waits up to one session TTL for the corrupt leader key
// cur to change (its holder may repair it), then deletes it if it is still
// the same (compare on its mod revision). It returns nil when the caller
// should campaign again.
func clearCorruptLeader(ctx context.Context, b kv.Backend, s *Session, cur kv.KeyValue, why string, rev int64) error {
	s.log.Warn("leader key is corrupt: waiting one session TTL for its holder to repair it, then deleting it",
		zap.String("key", cur.Key), zap.Int64("revision", cur.ModRevision), zap.Int64("lease", int64(cur.Lease)),
		zap.String("why", why), zap.Duration("wait", s.TTL()))
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	timer := s.clock.NewTimer(s.TTL())
	defer timer.Stop()
	wch := b.Watch(wctx, cur.Key, rev)
wait:
	for {
		select {
		case <-s.Done():
			return fmt.Errorf("%w: %w", ErrSessionDone, s.Err())
		case <-ctx.Done():
			return fmt.Errorf("session: campaign: %w", ctx.Err())
		case <-timer.Chan():
			break wait
		case resp, ok := <-wch:
			if !ok || resp.Err != nil {
				wch = nil // broken: fall back to the timer and a compare
				continue
			}
			for _, e := range resp.Events {
				if e.KV.Key == cur.Key {
					return nil // changed: look again
				}
			}
		}
	}
	resp, err := b.Txn(ctx, kv.Txn{
		If:   []kv.Cmp{kv.CmpModRevision(cur.Key, kv.Equal, cur.ModRevision)},
		Then: []kv.Op{kv.OpDelete(cur.Key)},
	})
	switch {
	case err != nil:
		if derr := sessionDone(s); derr != nil {
			return derr
		}
		return fmt.Errorf("session: campaign: delete corrupt leader key: %w", err)
	case resp.Succeeded:
		s.log.Warn("deleted a corrupt leader key that nobody repaired", zap.String("key", cur.Key),
			zap.Int64("revision", resp.Revision), zap.String("why", why))
	}
	return nil
}

func sessionDone(s *Session) error {
	select {
	case <-s.Done():
		return fmt.Errorf("%w: %w", ErrSessionDone, s.Err())
	default:
		return nil
	}
}

// waitGone watches key from rev until the leader key with create revision
// leaderRev is deleted or replaced (nil), ctx is done, or s ends.
func waitGone(ctx context.Context, b kv.Backend, s *Session, key string, leaderRev, rev int64) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var retry backoff
	for {
		wch := b.Watch(wctx, key, rev)
	recv:
		for {
			select {
			case <-s.Done():
				return fmt.Errorf("%w: %w", ErrSessionDone, s.Err())
			case <-ctx.Done():
				return fmt.Errorf("session: campaign: %w", ctx.Err())
			case resp, ok := <-wch:
				if !ok {
					break recv
				}
				if resp.Err != nil {
					if errors.Is(resp.Err, kv.ErrCompacted) {
						return nil // the caller's next Txn reads the key again
					}
					if errors.Is(resp.Err, kv.ErrClosed) {
						return fmt.Errorf("session: campaign: %w", resp.Err)
					}
					break recv
				}
				retry.reset()
				for _, e := range resp.Events {
					rev = e.Revision() + 1
					if e.KV.Key != key {
						continue
					}
					if e.Type == kv.EventDelete || e.KV.CreateRevision != leaderRev || corruptLeaderKey(e.KV) != "" {
						return nil // gone, replaced, or overwritten: look again
					}
				}
			}
		}
		if err := sleep(ctx, s.clock, retry.next(), s.Done()); err != nil {
			if derr := sessionDone(s); derr != nil {
				return derr
			}
			return fmt.Errorf("session: campaign: %w", err)
		}
	}
}

// Guard is the compare that fences a coordinator's writes:
// CreateRevision(meta.CoordinatorKey) == Token. Append it to every write
// txn; once the leader key is gone or replaced, the txn fails
// (Succeeded == false) and writes nothing.
func (l *Leadership) Guard() kv.Cmp {
	return kv.CmpCreateRevision(meta.CoordinatorKey, kv.Equal, l.token)
}

// Token returns the create revision of the leader key: the coordinator's
// fencing token. Tokens of successive leaders only grow.
func (l *Leadership) Token() int64 { return l.token }

// Done is closed when leadership ends: the session ended, the leader key
// was deleted or replaced, or Resign returned. The holder must stop acting
// at once; Guard keeps its late writes out.
func (l *Leadership) Done() <-chan struct{} { return l.done }

// Resign deletes the leader key if Guard still holds, so another candidate
// takes over without waiting for the lease, and ends the leadership (Done is
// closed when Resign returns, whatever the error). A failed delete leaves
// the key to its lease.
func (l *Leadership) Resign(ctx context.Context) error {
	_, err := l.b.Txn(ctx, kv.Txn{
		If:   []kv.Cmp{l.Guard()},
		Then: []kv.Op{kv.OpDelete(meta.CoordinatorKey)},
	})
	l.stopOnce.Do(func() { close(l.stop) })
	<-l.loopDone
	if err != nil {
		return fmt.Errorf("session: resign: %w", err)
	}
	return nil
}

// monitor closes done when the session ends, Resign is called, or the
// leader key stops being ours, following it from rev.
func (l *Leadership) monitor(rev int64) {
	defer close(l.loopDone)
	defer close(l.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var why string
	go func() {
		select {
		case <-l.s.Done():
		case <-l.stop:
		case <-ctx.Done():
		}
		cancel()
	}()
	why = followKey(ctx, l.b, l.s.clock, l.log, meta.CoordinatorKey, rev, func(ctx context.Context, cur *kv.KeyValue, rev int64) string {
		switch {
		case cur == nil:
			return deletedAt("leader key", rev)
		case cur.CreateRevision != l.token:
			return fmt.Sprintf("leader key replaced at revision %d", rev)
		case cur.Lease != l.s.Lease() || !bytes.Equal(cur.Value, l.val):
			l.repair(ctx, *cur)
		}
		return ""
	})
	switch {
	case why != "":
	case closedChan(l.stop):
		why = "resigned"
	default:
		why = "session ended: " + fmt.Sprint(l.s.Err())
	}
	l.log.Info("leadership ended: " + why)
}

func closedChan(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// repair rewrites our leader key, which someone overwrote (a value that may
// not decode, or no lease, so that it would outlive us), under our guard and
// a compare on the overwrite's mod revision. A failure is left to the next
// event: a newer write, or the key's deletion, which ends the leadership.
func (l *Leadership) repair(ctx context.Context, cur kv.KeyValue) {
	l.log.Warn("leader key overwritten by someone else: repairing it", zap.Int64("revision", cur.ModRevision),
		zap.Int64("lease", int64(cur.Lease)))
	_, err := l.b.Txn(ctx, kv.Txn{
		If:   []kv.Cmp{l.Guard(), kv.CmpModRevision(meta.CoordinatorKey, kv.Equal, cur.ModRevision)},
		Then: []kv.Op{kv.OpPutLease(meta.CoordinatorKey, l.val, l.s.Lease())},
	})
	if err != nil {
		l.log.Warn("leader key repair failed", zap.Error(err))
	}
}

// Leader returns the current coordinator's value and fencing token.
// ErrNoLeader when nobody leads.
func Leader(ctx context.Context, b kv.KV) (meta.CoordSession, int64, error) {
	cur, _, err := b.Get(ctx, meta.CoordinatorKey)
	if errors.Is(err, kv.ErrKeyNotFound) {
		return meta.CoordSession{}, 0, ErrNoLeader
	}
	if err != nil {
		return meta.CoordSession{}, 0, fmt.Errorf("session: read leader: %w", err)
	}
	v, err := meta.DecodeCoordSession(cur.Key, cur.Value)
	if err != nil {
		return meta.CoordSession{}, 0, err
	}
	return v, cur.CreateRevision, nil
}

// backoff spaces out retries of a broken watch: the first few retries are
// immediate (a dropped connection is routine and resuming loses nothing),
// then they back off, so a backend that keeps failing is not spun on.
type backoff struct{ fails int }

const immediateRetries = 3

func (b *backoff) reset() { b.fails = 0 }

func (b *backoff) next() time.Duration {
	b.fails++
	if b.fails <= immediateRetries {
		return 0
	}
	d := minWatchRetry << min(b.fails-immediateRetries-1, 10)
	return min(d, maxWatchRetry)
}

// sleep waits d on clock. It returns ctx's error when ctx is done, and
// errStopped when a stop channel closes first.
func sleep(ctx context.Context, clock clockwork.Clock, d time.Duration, stop ...<-chan struct{}) error {
	for _, ch := range stop {
		select {
		case <-ch:
			return errStopped
		default:
		}
	}
	if d <= 0 {
		return ctx.Err()
	}
	t := clock.NewTimer(d)
	defer t.Stop()
	var s0, s1 <-chan struct{}
	if len(stop) > 0 {
		s0 = stop[0]
	}
	if len(stop) > 1 {
		s1 = stop[1]
	}
	select {
	case <-t.Chan():
		return nil
	case <-s0:
		return errStopped
	case <-s1:
		return errStopped
	case <-ctx.Done():
		return ctx.Err()
	}
}

var errStopped = errors.New("stopped")
