package memkv

import (
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/chanwatch/chanwatch/kv"
)

// ErrBadSnapshot: Restore read a stream that is not a valid Store snapshot.
var ErrBadSnapshot = errors.New("memkv: bad snapshot")

const snapshotFormat = 1

// snapshot is the encoded form of a Store. It carries the history since the
// compact revision, so a restored Store equals its source (Hash included)
// and its watchers go on without a gap.
type snapshot struct {
	Format     int
	Rev        int64
	CompactRev int64
	Keys       []snapKey   // sorted by key
	Leases     []snapLease // sorted by ID
	Events     []snapEvent // revisions max(CompactRev,1)+1 .. Rev, in order
}

type snapKey struct {
	Key                                  string
	Value                                []byte
	CreateRevision, ModRevision, Version int64
	Lease                                kv.LeaseID
}

type snapLease struct {
	ID  kv.LeaseID
	TTL time.Duration
}

type snapEvent struct {
	Rev                     int64
	Key                     string
	Value                   []byte
	CreateRevision, Version int64
	Lease                   kv.LeaseID
	Delete                  bool
}

// Snapshot writes the whole state to w: keys, leases (TTLs, no deadlines),
// the revision, the compact revision and the history since it. It copies the
// state under the read lock and encodes outside it, so a slow w does not
// stall writers. Compact first to bound its size.
func (s *Store) Snapshot(w io.Writer) error {
	s.mu.RLock()
	snap := snapshot{Format: snapshotFormat, Rev: s.rev, CompactRev: s.compactRev}
	keys := s.sortedKeysLocked()
	snap.Keys = make([]snapKey, len(keys))
	for i, k := range keys {
		ks := s.keys[k]
		snap.Keys[i] = snapKey{k, ks.value, ks.createRevision, ks.modRevision, ks.version, ks.lease}
	}
	for _, id := range s.leaseIDsLocked() {
		snap.Leases = append(snap.Leases, snapLease{ID: id, TTL: s.leases[id].ttl})
	}
	snap.Events = make([]snapEvent, 0, len(s.hist))
	for i, start := range s.histStarts {
		rev := s.histBase + 1 + int64(i)
		end := s.histOff + int64(len(s.hist))
		if i+1 < len(s.histStarts) {
			end = s.histStarts[i+1]
		}
		for _, e := range s.hist[start-s.histOff : end-s.histOff] {
			snap.Events = append(snap.Events, snapEvent{rev, e.key, e.value, e.createRevision, e.version, e.lease, e.del})
		}
	}
	s.mu.RUnlock()
	// Values are immutable once stored, so encoding them unlocked is safe.
	if err := gob.NewEncoder(w).Encode(&snap); err != nil {
		return fmt.Errorf("memkv: write snapshot: %w", err)
	}
	return nil
}

// Restore replaces the whole state with a snapshot written by Snapshot. On
// error (ErrBadSnapshot, a read error, kv.ErrClosed) the state is unchanged.
// Open watches are kept: one whose next revision is above the compact
// revision of the snapshot goes on from the restored history, without gap or
// duplicate; one whose next revision was compacted ends with a
// *kv.CompactedError. (raftkv restores forward along one log, so the history
// a watcher saw is a prefix of the restored one.)
func (s *Store) Restore(r io.Reader) error {
	var snap snapshot
	if err := gob.NewDecoder(r).Decode(&snap); err != nil {
		return fmt.Errorf("%w: decode: %w", ErrBadSnapshot, err)
	}
	n, err := buildStore(&snap)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return kv.ErrClosed
	}
	s.keys, s.leases = n.keys, n.leases
	s.rev, s.compactRev = n.rev, n.compactRev
	s.hist, s.histOff, s.histStarts, s.histBase = n.hist, n.histOff, n.histStarts, n.histBase
	s.sorted = nil
	// Wake every watcher, waiting or not: each rechecks its next revision.
	s.waiting.Store(false)
	close(s.notify)
	s.notify = make(chan struct{})
	return nil
}

func bad(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadSnapshot, fmt.Sprintf(format, args...))
}

// buildStore checks snap and returns the state it describes.
func buildStore(snap *snapshot) (*Store, error) {
	if snap.Format != snapshotFormat {
		return nil, bad("format %d, want %d", snap.Format, snapshotFormat)
	}
	if snap.Rev < 1 || snap.CompactRev < 0 || snap.CompactRev > snap.Rev {
		return nil, bad("revision %d, compact revision %d", snap.Rev, snap.CompactRev)
	}
	n := NewStore()
	n.rev, n.compactRev = snap.Rev, snap.CompactRev
	n.histBase = max(snap.CompactRev, 1)
	for i, l := range snap.Leases {
		if l.ID <= kv.NoLease || l.TTL <= 0 || (i > 0 && l.ID <= snap.Leases[i-1].ID) {
			return nil, bad("lease %d ttl %v", l.ID, l.TTL)
		}
		n.leases[l.ID] = &lease{ttl: l.TTL, keys: make(map[string]struct{})}
	}
	for i, k := range snap.Keys {
		if kv.ValidateKey(k.Key) != nil || (i > 0 && k.Key <= snap.Keys[i-1].Key) ||
			k.CreateRevision < 1 || k.ModRevision < k.CreateRevision || k.ModRevision > snap.Rev || k.Version < 1 {
			return nil, bad("key %q", k.Key)
		}
		if k.Lease != kv.NoLease {
			l, ok := n.leases[k.Lease]
			if !ok {
				return nil, bad("key %q on missing lease %d", k.Key, k.Lease)
			}
			l.keys[k.Key] = struct{}{}
		}
		n.keys[k.Key] = &keyState{k.Value, k.CreateRevision, k.ModRevision, k.Version, k.Lease}
	}
	// The history must hold every revision of (histBase, Rev], in order.
	n.hist = make([]histEvent, 0, len(snap.Events))
	for _, e := range snap.Events {
		want := n.histBase + 1 + int64(len(n.histStarts))
		switch {
		case e.Rev == want:
			n.histStarts = append(n.histStarts, int64(len(n.hist)))
		case e.Rev != want-1 || len(n.histStarts) == 0:
			return nil, bad("event of revision %d, want %d", e.Rev, want)
		}
		n.hist = append(n.hist, histEvent{e.Key, e.Value, e.CreateRevision, e.Version, e.Lease, e.Delete})
	}
	if got := n.histBase + int64(len(n.histStarts)); got != n.rev {
		return nil, bad("history ends at revision %d, want %d", got, n.rev)
	}
	return n, nil
}
