package memkv

import (
	"bytes"
	"context"
	"fmt"

	"github.com/chanwatch/chanwatch/kv"
)

// Txn applies t atomically and returns the revision after it. It validates
// t with kv.ValidateTxn(t, maxOps) first (kv.ErrTxnTooLarge,
// kv.ErrInvalidTxn, kv.ErrInvalidKey), and fails with kv.ErrLeaseNotFound
// when a put of the chosen branch names a lease that does not exist; on any
// error nothing is written. A Txn that writes at least one key advances the
// revision by one; deletes of missing keys write nothing. A Get op sees the
// writes of the ops before it. After Close it fails with kv.ErrClosed.
func (s *Store) Txn(t kv.Txn, maxOps int) (kv.TxnResponse, error) {
	if err := kv.ValidateTxn(t, maxOps); err != nil {
		return kv.TxnResponse{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return kv.TxnResponse{}, kv.ErrClosed
	}
	ok := true
	for _, c := range t.If {
		if !s.compareLocked(c) {
			ok = false
			break
		}
	}
	ops := t.Then
	if !ok {
		ops = t.Else
	}
	// Check leases before writing anything, so a failure writes nothing.
	for _, o := range ops {
		if o.Type == kv.OpTypePut && o.Lease != kv.NoLease {
			if _, found := s.leases[o.Lease]; !found {
				return kv.TxnResponse{}, fmt.Errorf("%w: put %q with lease %d", kv.ErrLeaseNotFound, o.Key, o.Lease)
			}
		}
	}
	resp := kv.TxnResponse{Succeeded: ok, Responses: make([]kv.OpResponse, len(ops))}
	newRev := s.rev + 1
	wrote := false
	for i, o := range ops {
		switch o.Type {
		case kv.OpTypePut:
			if !wrote {
				s.beginRevLocked()
				wrote = true
			}
			s.putLocked(o.Key, o.Value, o.Lease, newRev)
		case kv.OpTypeDelete:
			if _, found := s.keys[o.Key]; found {
				if !wrote {
					s.beginRevLocked()
					wrote = true
				}
				s.deleteLocked(o.Key)
				resp.Responses[i].Deleted = 1
			}
		case kv.OpTypeGet:
			if ks, found := s.keys[o.Key]; found {
				v := ks.keyValue(o.Key)
				resp.Responses[i].KV = &v
			}
		}
	}
	if wrote {
		s.rev = newRev
		s.broadcastLocked()
	}
	resp.Revision = s.rev
	return resp, nil
}

func (s *Store) compareLocked(c kv.Cmp) bool {
	ks, found := s.keys[c.Key]
	var n int64
	switch c.Target {
	case kv.TargetValue:
		if !found {
			return false // no value to compare, as in etcd
		}
		return holds(bytes.Compare(ks.value, c.Value), c.Result)
	case kv.TargetVersion:
		if found {
			n = ks.version
		}
	case kv.TargetCreateRevision:
		if found {
			n = ks.createRevision
		}
	case kv.TargetModRevision:
		if found {
			n = ks.modRevision
		}
	}
	switch {
	case n < c.Num:
		return holds(-1, c.Result)
	case n > c.Num:
		return holds(1, c.Result)
	}
	return holds(0, c.Result)
}

func holds(cmp int, r kv.CmpResult) bool {
	switch r {
	case kv.Equal:
		return cmp == 0
	case kv.NotEqual:
		return cmp != 0
	case kv.Less:
		return cmp < 0
	case kv.Greater:
		return cmp > 0
	}
	return false
}

// beginRevLocked opens revision rev+1 in the history. The caller then
// appends at least one event and sets s.rev = rev+1.
func (s *Store) beginRevLocked() {
	s.histStarts = append(s.histStarts, s.histOff+int64(len(s.hist)))
}

func (s *Store) putLocked(key string, value []byte, id kv.LeaseID, rev int64) {
	ks, found := s.keys[key]
	if !found {
		ks = &keyState{createRevision: rev}
		s.keys[key] = ks
		s.sorted = nil
	}
	ks.value = bytes.Clone(value)
	ks.modRevision = rev
	ks.version++
	if ks.lease != id {
		if l := s.leases[ks.lease]; l != nil {
			delete(l.keys, key)
		}
		if l := s.leases[id]; l != nil {
			l.keys[key] = struct{}{}
		}
		ks.lease = id
	}
	s.hist = append(s.hist, histEvent{
		key:            key,
		value:          ks.value,
		createRevision: ks.createRevision,
		version:        ks.version,
		lease:          id,
	})
}

func (s *Store) deleteLocked(key string) {
	ks := s.keys[key]
	if l := s.leases[ks.lease]; l != nil {
		delete(l.keys, key)
	}
	delete(s.keys, key)
	s.sorted = nil
	s.hist = append(s.hist, histEvent{key: key, del: true})
}

// Txn applies t; see kv.KV. It checks t against MaxTxnBytes
// (kv.ErrTxnTooLarge) before the store sees it. A Txn still hung when its context ends fails
// with an error wrapping kv.ErrUnknownOutcome and ctx.Err(), and is not
// applied.
func (m *KV) Txn(ctx context.Context, t kv.Txn) (kv.TxnResponse, error) {
	if err := m.begin(ctx, true); err != nil {
		return kv.TxnResponse{}, err
	}
	if err := m.failTxn(); err != nil {
		return kv.TxnResponse{}, err
	}
	if err := kv.ValidateTxnBytes(t, m.sh.maxTxnBytes); err != nil {
		return kv.TxnResponse{}, err
	}
	resp, err := m.sh.store.Txn(t, m.sh.maxTxnOps)
	if err != nil {
		return resp, err
	}
	m.sh.autoCompact()
	return resp, nil
}

// MaxTxnOps returns the largest number of entries allowed in each of a
// Txn's If, Then and Else lists (WithMaxTxnOps, default 128).
func (m *KV) MaxTxnOps() int { return m.sh.maxTxnOps }

// MaxTxnBytes returns the largest kv.TxnBytes of a Txn (WithMaxTxnBytes,
// default DefaultMaxTxnBytes).
func (m *KV) MaxTxnBytes() int { return m.sh.maxTxnBytes }
