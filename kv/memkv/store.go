package memkv

import (
	"bytes"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chanwatch/chanwatch/kv"
)

// Sentinel errors of the Store's lease table, beyond those in package kv.
var (
	// ErrLeaseExists: Grant named a lease ID that is already granted.
	ErrLeaseExists = errors.New("memkv: lease already exists")
	// ErrInvalidLeaseID: Grant named a lease ID <= 0 (0 is kv.NoLease).
	ErrInvalidLeaseID = errors.New("memkv: invalid lease ID")
)

// keyState is the live state of one key. value is never modified in place:
// a put installs a fresh copy, so the history and readers may share it.
type keyState struct {
	value          []byte
	createRevision int64
	modRevision    int64
	version        int64
	lease          kv.LeaseID
}

// lease is the Store's view of a lease: its TTL and attached keys. The
// deadline is not here: time belongs to the caller (KV, or raft's leader).
type lease struct {
	ttl  time.Duration
	keys map[string]struct{}
}

// histEvent is one event of the history. Its revision is implied by its
// position (see Store.histStarts), which keeps 100k+ revisions compact.
type histEvent struct {
	key            string
	value          []byte // shared with keyState, immutable
	createRevision int64
	version        int64
	lease          kv.LeaseID
	del            bool
}

// Store is a deterministic MVCC key-value state with leases (without
// deadlines) and a watchable event history. It is the state machine of both
// memkv and raftkv: given the same sequence of Txn, Grant, Revoke, Compact
// and Restore calls, two Stores reach the same state and the same Hash, and
// their watchers see the same events. It never reads a clock.
//
// All methods are safe for concurrent use. Values passed in are copied and
// values returned are copies.
type Store struct {
	mu sync.RWMutex

	keys   map[string]*keyState
	leases map[kv.LeaseID]*lease

	rev        int64
	compactRev int64

	// The history holds every event of revisions (histBase, rev], where
	// histBase = max(compactRev, 1): revision 1 (the empty store) has no
	// events and every later revision has at least one. The events of
	// revision histBase+1+i start at absolute index histStarts[i]; hist[0]
	// has absolute index histOff, so compaction only reslices.
	hist       []histEvent
	histOff    int64
	histStarts []int64
	histBase   int64

	// notify is closed and replaced when a revision is written (only if a
	// watcher took it since the last write: waiting), so writers broadcast
	// without ever blocking on a watcher.
	notify  chan struct{}
	waiting atomic.Bool

	closed bool
	done   chan struct{} // closed by Close

	// sorted caches the sorted key set for List and Hash. It is cleared
	// under mu (write) when the key set changes and filled under mu (read)
	// plus sortMu.
	sortMu sync.Mutex
	sorted []string
}

// NewStore returns an empty store at revision 1 with compact revision 0.
func NewStore() *Store {
	return &Store{
		keys:     make(map[string]*keyState),
		leases:   make(map[kv.LeaseID]*lease),
		rev:      1,
		histBase: 1,
		notify:   make(chan struct{}),
		done:     make(chan struct{}),
	}
}

// Rev returns the current revision.
func (s *Store) Rev() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.rev
}

// CompactRev returns the compaction revision: history at or below it is gone.
func (s *Store) CompactRev() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.compactRev
}

// Get returns key and the current revision. It fails with kv.ErrInvalidKey,
// kv.ErrKeyNotFound (the revision is still returned) or kv.ErrClosed.
func (s *Store) Get(key string) (kv.KeyValue, int64, error) {
	if err := kv.ValidateKey(key); err != nil {
		return kv.KeyValue{}, 0, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return kv.KeyValue{}, 0, kv.ErrClosed
	}
	ks, ok := s.keys[key]
	if !ok {
		return kv.KeyValue{}, s.rev, fmt.Errorf("%w: %q", kv.ErrKeyNotFound, key)
	}
	return ks.keyValue(key), s.rev, nil
}

// List returns every key with the given raw string prefix, sorted by key,
// and the revision they were read at. It reads the last state even after
// Close; prefix validation is the caller's (kv.ValidatePrefix).
func (s *Store) List(prefix string) ([]kv.KeyValue, int64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	keys := s.sortedKeysLocked()
	i := sort.SearchStrings(keys, prefix)
	var out []kv.KeyValue
	for ; i < len(keys) && strings.HasPrefix(keys[i], prefix); i++ {
		out = append(out, s.keys[keys[i]].keyValue(keys[i]))
	}
	return out, s.rev
}

// Compact discards the history up to and including rev. It fails with
// kv.ErrFutureRev when rev > Rev(), a *kv.CompactedError when
// rev <= CompactRev(), kv.ErrClosed after Close. Watchers that still need a
// discarded revision end with a *kv.CompactedError.
func (s *Store) Compact(rev int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return kv.ErrClosed
	}
	if rev > s.rev {
		return fmt.Errorf("%w: compact %d > current revision %d", kv.ErrFutureRev, rev, s.rev)
	}
	if rev <= s.compactRev {
		return &kv.CompactedError{CompactRevision: s.compactRev}
	}
	s.compactLocked(rev)
	return nil
}

func (s *Store) compactLocked(rev int64) {
	s.compactRev = rev
	if rev <= s.histBase {
		return
	}
	k := rev - s.histBase // revisions to drop
	cut := s.histOff + int64(len(s.hist))
	if k < int64(len(s.histStarts)) {
		cut = s.histStarts[k]
	}
	n := cut - s.histOff
	clear(s.hist[:n]) // let the values be collected; append reallocates later
	s.hist = s.hist[n:]
	s.histOff = cut
	s.histStarts = s.histStarts[k:]
	s.histBase = rev
}

// Hash returns a digest of the state: every key with its value, revisions,
// version and lease, every lease with its TTL, the revision and the compact
// revision. Two stores fed the same calls have the same Hash.
func (s *Store) Hash() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	h := fnv.New64a()
	var buf [8]byte
	num := func(v int64) {
		for i := range buf {
			buf[i] = byte(uint64(v) >> (8 * i))
		}
		h.Write(buf[:])
	}
	str := func(b []byte) {
		num(int64(len(b)))
		h.Write(b)
	}
	num(s.rev)
	num(s.compactRev)
	keys := s.sortedKeysLocked()
	num(int64(len(keys)))
	for _, k := range keys {
		ks := s.keys[k]
		str([]byte(k))
		str(ks.value)
		num(ks.createRevision)
		num(ks.modRevision)
		num(ks.version)
		num(int64(ks.lease))
	}
	ids := s.leaseIDsLocked()
	num(int64(len(ids)))
	for _, id := range ids {
		num(int64(id))
		num(int64(s.leases[id].ttl))
	}
	return h.Sum64()
}

// Close ends every open watch with kv.ErrClosed. Afterwards Txn, Get, Grant,
// Revoke, Compact, Restore and new watches fail with kv.ErrClosed; List, Rev,
// Lease, Snapshot and Hash still read the last state. Close is idempotent.
func (s *Store) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	close(s.done)
}

// sortedKeysLocked returns the sorted key set; the caller holds mu (read or
// write) and must not modify the result.
func (s *Store) sortedKeysLocked() []string {
	s.sortMu.Lock()
	defer s.sortMu.Unlock()
	if s.sorted == nil && len(s.keys) > 0 {
		keys := make([]string, 0, len(s.keys))
		for k := range s.keys {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		s.sorted = keys
	}
	return s.sorted
}

func (s *Store) leaseIDsLocked() []kv.LeaseID {
	ids := make([]kv.LeaseID, 0, len(s.leases))
	for id := range s.leases {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// broadcastLocked wakes every watcher waiting for a new revision. The caller
// holds mu for writing.
func (s *Store) broadcastLocked() {
	if s.waiting.Swap(false) {
		close(s.notify)
		s.notify = make(chan struct{})
	}
}

func (ks *keyState) keyValue(key string) kv.KeyValue {
	return kv.KeyValue{
		Key:            key,
		Value:          bytes.Clone(ks.value),
		CreateRevision: ks.createRevision,
		ModRevision:    ks.modRevision,
		Version:        ks.version,
		Lease:          ks.lease,
	}
}
