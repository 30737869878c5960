package memkv

import (
	"context"
	"fmt"
	"sync"

	"github.com/chanwatch/chanwatch/kv"
)

// FailNext makes the next n calls on this handle (Get, List, Txn, Grant,
// KeepAliveOnce, Revoke, TimeToLive, Compact, Watch) fail with an error
// wrapping err (kv.ErrUnavailable when err is nil); a failed Watch ends at
// once with it. The calls are not applied. n <= 0 cancels pending failures.
func (m *KV) FailNext(n int, err error) {
	if err == nil {
		err = kv.ErrUnavailable
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.failN, m.failErr = max(n, 0), err
}

// FailNextTxn is FailNext for Txn calls alone: the next n Txns on this
// handle fail with an error wrapping err (kv.ErrUnavailable when nil) and
// are not applied, while every other call goes through. A test that means
// to fail a write uses it, so that a watch or keep-alive of the same handle
// cannot take the failure first. n <= 0 cancels pending failures.
func (m *KV) FailNextTxn(n int, err error) {
	if err == nil {
		err = kv.ErrUnavailable
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.failTxnN, m.failTxnErr = max(n, 0), err
}

// failTxn takes one pending FailNextTxn failure, if any.
func (m *KV) failTxn() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failTxnN == 0 {
		return nil
	}
	m.failTxnN--
	return fmt.Errorf("memkv: injected failure: %w", m.failTxnErr)
}

// Hang makes calls on this handle block until release is called or their
// context is done; they then fail with an error wrapping ctx.Err() (and
// kv.ErrUnknownOutcome for Txn and Revoke, which are not applied). Watches
// started meanwhile deliver nothing until release. Closing the handle ends
// the hang with kv.ErrClosed. release is idempotent; calling Hang again
// while hung returns a release of the same hang.
func (m *KV) Hang() (release func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.hang == nil {
		m.hang = &hang{ch: make(chan struct{})}
	}
	h := m.hang
	return func() {
		h.once.Do(func() {
			m.mu.Lock()
			if m.hang == h {
				m.hang = nil
			}
			m.mu.Unlock()
			close(h.ch)
		})
	}
}

type hang struct {
	ch   chan struct{}
	once sync.Once
}

// DropWatches ends every open watch of this handle with an error wrapping
// kv.ErrUnavailable, as a broken connection would. A watcher resumes from
// its last revision + 1 without gap or duplicate.
func (m *KV) DropWatches() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	m.watches.end(fmt.Errorf("%w: memkv: watches dropped", kv.ErrUnavailable))
	m.watches = newWatchGroup()
}

// watchGroup is the set of watches one handle started since the last
// DropWatches: closing stop ends them all with err.
type watchGroup struct {
	stop chan struct{}
	err  error // written before stop is closed
}

func newWatchGroup() *watchGroup { return &watchGroup{stop: make(chan struct{})} }

func (g *watchGroup) end(err error) {
	g.err = err
	close(g.stop)
}

// begin runs the per-call checks: context, closed handle or store, injected
// failure, hang; then it expires due leases, so that after a fake clock's
// Advance every call already sees the expiry. write marks calls whose
// outcome is unknown if they time out while hung.
func (m *KV) begin(ctx context.Context, write bool) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("memkv: %w", err)
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return kv.ErrClosed
	}
	if m.failN > 0 {
		m.failN--
		err := m.failErr
		m.mu.Unlock()
		return fmt.Errorf("memkv: injected failure: %w", err)
	}
	h := m.hang
	m.mu.Unlock()
	if h != nil {
		select {
		case <-h.ch:
		case <-m.closeCh:
			return kv.ErrClosed
		case <-ctx.Done():
			if write {
				return fmt.Errorf("memkv: hung write not applied: %w: %w", kv.ErrUnknownOutcome, ctx.Err())
			}
			return fmt.Errorf("memkv: hung call: %w", ctx.Err())
		}
	}
	select {
	case <-m.sh.stop:
		return kv.ErrClosed
	default:
	}
	m.sh.expire()
	return nil
}

// watchHooks runs Watch's per-call checks and returns the hooks that tie the
// watch to this handle.
func (m *KV) watchHooks() (watchHooks, error) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return watchHooks{}, kv.ErrClosed
	}
	if m.failN > 0 {
		m.failN--
		err := m.failErr
		m.mu.Unlock()
		return watchHooks{}, fmt.Errorf("memkv: injected failure: %w", err)
	}
	g := m.watches
	hk := watchHooks{stop: g.stop, stopErr: func() error { return g.err }}
	if m.hang != nil {
		hk.gate = m.hang.ch
	}
	m.mu.Unlock()
	m.sh.expire()
	return hk, nil
}
