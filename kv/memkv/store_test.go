package memkv

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/chanwatch/chanwatch/kv"
)

func TestStoreRevisionsAndVersions(t *testing.T) {
	s := NewStore()
	defer s.Close()
	if s.Rev() != 1 || s.CompactRev() != 0 {
		t.Fatalf("fresh store at rev %d compact %d, want 1 and 0", s.Rev(), s.CompactRev())
	}
	r := mustTxn(t, s, kv.Txn{Then: []kv.Op{kv.OpPut("a", []byte("1")), kv.OpPut("b", []byte("1"))}})
	if r.Revision != 2 {
		t.Fatalf("first write at rev %d, want 2", r.Revision)
	}
	mustTxn(t, s, kv.Txn{Then: []kv.Op{kv.OpPut("a", []byte("2"))}})
	a, rev, err := s.Get("a")
	if err != nil || rev != 3 {
		t.Fatalf("get a: %v rev %d", err, rev)
	}
	if a.CreateRevision != 2 || a.ModRevision != 3 || a.Version != 2 || string(a.Value) != "2" {
		t.Fatalf("a = %+v", a)
	}

	// Deleting a missing key writes nothing and does not bump the revision.
	r = mustTxn(t, s, kv.Txn{Then: []kv.Op{kv.OpDelete("missing")}})
	if r.Revision != 3 || r.Responses[0].Deleted != 0 {
		t.Fatalf("delete missing: %+v", r)
	}
	// Delete resets the key: re-creation starts over.
	r = mustTxn(t, s, kv.Txn{Then: []kv.Op{kv.OpDelete("a"), kv.OpDelete("missing")}})
	if r.Revision != 4 || r.Responses[0].Deleted != 1 || r.Responses[1].Deleted != 0 {
		t.Fatalf("delete a: %+v", r)
	}
	if _, rev, err := s.Get("a"); !errors.Is(err, kv.ErrKeyNotFound) || rev != 4 {
		t.Fatalf("get deleted: rev %d err %v", rev, err)
	}
	mustTxn(t, s, kv.Txn{Then: []kv.Op{kv.OpPut("a", nil)}})
	a, _, _ = s.Get("a")
	if a.CreateRevision != 5 || a.ModRevision != 5 || a.Version != 1 {
		t.Fatalf("re-created a = %+v", a)
	}

	list, rev := s.List("")
	if rev != 5 || len(list) != 2 || list[0].Key != "a" || list[1].Key != "b" {
		t.Fatalf("list = %+v at %d", list, rev)
	}
}

func TestStoreTxnContract(t *testing.T) {
	s := NewStore()
	defer s.Close()
	v := []byte("v")

	// Create-only: the second create fails its compare and runs Else.
	create := kv.Txn{If: []kv.Cmp{kv.CmpMissing("k")}, Then: []kv.Op{kv.OpPut("k", v)}, Else: []kv.Op{kv.OpGet("k")}}
	if r := mustTxn(t, s, create); !r.Succeeded || r.Revision != 2 {
		t.Fatalf("first create: %+v", r)
	}
	r := mustTxn(t, s, create)
	if r.Succeeded || r.Revision != 2 || r.Responses[0].KV == nil || r.Responses[0].KV.ModRevision != 2 {
		t.Fatalf("second create: %+v", r)
	}

	// CAS on mod revision, and on value.
	cas := func(mod int64) kv.Txn {
		return kv.Txn{If: []kv.Cmp{kv.CmpModRevision("k", kv.Equal, mod)}, Then: []kv.Op{kv.OpPut("k", []byte("w"))}}
	}
	if r := mustTxn(t, s, cas(1)); r.Succeeded || r.Revision != 2 {
		t.Fatalf("stale CAS: %+v", r)
	}
	if r := mustTxn(t, s, cas(2)); !r.Succeeded || r.Revision != 3 {
		t.Fatalf("CAS: %+v", r)
	}
	valueIs := func(key, val string) kv.Txn {
		return kv.Txn{If: []kv.Cmp{kv.CmpValue(key, kv.Equal, []byte(val))}}
	}
	if r := mustTxn(t, s, valueIs("k", "w")); !r.Succeeded {
		t.Fatal("value compare on k should hold")
	}
	// A Value compare on a missing key is false, whatever the relation.
	for _, res := range []kv.CmpResult{kv.Equal, kv.NotEqual, kv.Less, kv.Greater} {
		txn := kv.Txn{If: []kv.Cmp{kv.CmpValue("nope", res, nil)}}
		if r := mustTxn(t, s, txn); r.Succeeded {
			t.Fatalf("value %v on a missing key held", res)
		}
	}

	// A Get op sees the writes before it, at the txn's revision.
	r = mustTxn(t, s, kv.Txn{Then: []kv.Op{kv.OpGet("n"), kv.OpPut("n", v), kv.OpGet("n"), kv.OpDelete("k"), kv.OpGet("k")}})
	if r.Revision != 4 || r.Responses[0].KV != nil || r.Responses[2].KV == nil ||
		r.Responses[2].KV.ModRevision != 4 || r.Responses[3].Deleted != 1 || r.Responses[4].KV != nil {
		t.Fatalf("txn with gets: %+v", r)
	}

	// Static rules: nothing written, revision unchanged.
	big := make([]kv.Op, DefaultMaxTxnOps+1)
	for i := range big {
		big[i] = kv.OpPut(fmt.Sprintf("big/%d", i), v)
	}
	if _, err := s.Txn(kv.Txn{Then: big}, DefaultMaxTxnOps); !errors.Is(err, kv.ErrTxnTooLarge) {
		t.Fatalf("too large: %v", err)
	}
	if _, err := s.Txn(kv.Txn{Then: big[:DefaultMaxTxnOps]}, DefaultMaxTxnOps); err != nil {
		t.Fatalf("max size txn: %v", err)
	}
	dup := kv.Txn{Else: []kv.Op{kv.OpPut("d", v), kv.OpDelete("d")}}
	if _, err := s.Txn(dup, DefaultMaxTxnOps); !errors.Is(err, kv.ErrInvalidTxn) {
		t.Fatalf("duplicate key: %v", err)
	}
	if _, err := s.Txn(kv.Txn{Then: []kv.Op{kv.OpPut("/abs", v)}}, DefaultMaxTxnOps); !errors.Is(err, kv.ErrInvalidKey) {
		t.Fatalf("invalid key: %v", err)
	}
	leased := kv.Txn{Then: []kv.Op{kv.OpPut("x", v), kv.OpPutLease("y", v, 42)}}
	if _, err := s.Txn(leased, DefaultMaxTxnOps); !errors.Is(err, kv.ErrLeaseNotFound) {
		t.Fatalf("missing lease: %v", err)
	}
	if _, _, err := s.Get("x"); !errors.Is(err, kv.ErrKeyNotFound) {
		t.Fatalf("a failed txn wrote x: %v", err)
	}
	if s.Rev() != 5 {
		t.Fatalf("rev %d after rejected txns, want 5", s.Rev())
	}
}

func TestStoreLeases(t *testing.T) {
	s := NewStore()
	defer s.Close()
	if err := s.Grant(7, 0); !errors.Is(err, kv.ErrInvalidTTL) {
		t.Fatalf("ttl 0: %v", err)
	}
	if err := s.Grant(kv.NoLease, 1); !errors.Is(err, ErrInvalidLeaseID) {
		t.Fatalf("id 0: %v", err)
	}
	if err := s.Grant(7, 5); err != nil {
		t.Fatal(err)
	}
	if err := s.Grant(7, 5); !errors.Is(err, ErrLeaseExists) {
		t.Fatalf("twice: %v", err)
	}
	if err := s.Grant(8, 5); err != nil {
		t.Fatal(err)
	}
	mustTxn(t, s, kv.Txn{Then: []kv.Op{kv.OpPutLease("b", nil, 7), kv.OpPutLease("a", nil, 7), kv.OpPutLease("c", nil, 8)}})
	// Moving a key to another lease (or none) detaches it from the old one.
	mustTxn(t, s, kv.Txn{Then: []kv.Op{kv.OpPutLease("c", nil, 7), kv.OpPut("b", nil)}})
	l7, _ := s.Lease(7)
	l8, _ := s.Lease(8)
	if fmt.Sprint(l7.Keys) != "[a c]" || len(l8.Keys) != 0 || l7.TTL != 5 {
		t.Fatalf("leases 7 = %+v, 8 = %+v", l7, l8)
	}
	if ls := s.Leases(); len(ls) != 2 || ls[0].ID != 7 || ls[1].ID != 8 {
		t.Fatalf("leases = %+v", ls)
	}
	w := s.Watch(t.Context(), "", 0)
	rev, err := s.Revoke(7)
	if err != nil || rev != 4 {
		t.Fatalf("revoke 7: rev %d, %v", rev, err)
	}
	evs := recvEvents(t, w, 2)
	if evs[0].KV.Key != "a" || evs[1].KV.Key != "c" || evs[0].Type != kv.EventDelete || evs[1].Revision() != 4 {
		t.Fatalf("revoke events %+v", evs)
	}
	// A lease with no keys revokes without a revision.
	if rev, err := s.Revoke(8); err != nil || rev != 4 {
		t.Fatalf("revoke 8: rev %d, %v", rev, err)
	}
	if _, err := s.Revoke(8); !errors.Is(err, kv.ErrLeaseNotFound) {
		t.Fatalf("revoke twice: %v", err)
	}
	if _, ok := s.Lease(8); ok {
		t.Fatal("lease 8 still there")
	}
}

func TestStoreCompact(t *testing.T) {
	s := NewStore()
	defer s.Close()
	for i := range 5 {
		mustTxn(t, s, kv.Txn{Then: []kv.Op{kv.OpPut("k", []byte{byte(i)})}})
	}
	if err := s.Compact(7); !errors.Is(err, kv.ErrFutureRev) {
		t.Fatalf("future: %v", err)
	}
	if err := s.Compact(4); err != nil {
		t.Fatal(err)
	}
	err := s.Compact(4)
	if !errors.Is(err, kv.ErrCompacted) || kv.CompactRevision(err) != 4 {
		t.Fatalf("compact again: %v", err)
	}
	// The state is untouched; only history went.
	if k, _, err := s.Get("k"); err != nil || k.Version != 5 {
		t.Fatalf("k after compact: %+v %v", k, err)
	}
	err = recvErr(t, s.Watch(t.Context(), "", 4))
	if kv.CompactRevision(err) != 4 {
		t.Fatalf("watch at compact rev: %v", err)
	}
	evs := recvEvents(t, s.Watch(t.Context(), "", 5), 2)
	if evs[0].Revision() != 5 || evs[1].Revision() != 6 || !bytes.Equal(evs[1].KV.Value, []byte{4}) {
		t.Fatalf("events after compact: %+v", evs)
	}
	if err := s.Compact(6); err != nil {
		t.Fatal(err)
	}
	mustTxn(t, s, kv.Txn{Then: []kv.Op{kv.OpPut("k", nil)}})
	if evs := recvEvents(t, s.Watch(t.Context(), "", 7), 1); evs[0].Revision() != 7 {
		t.Fatalf("events after full compact: %+v", evs)
	}
}

func TestStoreClosed(t *testing.T) {
	s := NewStore()
	w := s.Watch(t.Context(), "", 0)
	s.Close()
	s.Close()
	if err := recvErr(t, w); !errors.Is(err, kv.ErrClosed) {
		t.Fatalf("watch: %v", err)
	}
	if err := recvErr(t, s.Watch(t.Context(), "", 0)); !errors.Is(err, kv.ErrClosed) {
		t.Fatalf("new watch: %v", err)
	}
	if _, err := s.Txn(kv.Txn{}, 1); !errors.Is(err, kv.ErrClosed) {
		t.Fatalf("txn: %v", err)
	}
	if _, _, err := s.Get("k"); !errors.Is(err, kv.ErrClosed) {
		t.Fatalf("get: %v", err)
	}
	if err := s.Grant(1, 1); !errors.Is(err, kv.ErrClosed) {
		t.Fatalf("grant: %v", err)
	}
	if err := s.Restore(bytes.NewReader(nil)); err == nil {
		t.Fatal("restore on a closed store succeeded")
	}
}

// Revoke's DELETE events come in key order, never in map order: replicas
// must emit the same events.
func TestStoreRevokeEventOrder(t *testing.T) {
	s := NewStore()
	defer s.Close()
	if err := s.Grant(1, 1); err != nil {
		t.Fatal(err)
	}
	var ops []kv.Op
	for i := range 50 {
		ops = append(ops, kv.OpPutLease(fmt.Sprintf("k%02d", 49-i), nil, 1))
	}
	mustTxn(t, s, kv.Txn{Then: ops})
	w := s.Watch(t.Context(), "", 0)
	if _, err := s.Revoke(1); err != nil {
		t.Fatal(err)
	}
	for i, ev := range recvEvents(t, w, 50) {
		if want := fmt.Sprintf("k%02d", i); ev.KV.Key != want {
			t.Fatalf("event %d on %q, want %q", i, ev.KV.Key, want)
		}
	}
}
