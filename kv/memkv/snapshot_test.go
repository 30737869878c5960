package memkv

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"pgregory.net/rapid"
)

// cmd is one Store call, so that the same sequence can be fed to several
// stores.
type cmd struct {
	txn     *kv.Txn
	grant   kv.LeaseID
	revoke  kv.LeaseID
	compact int64 // revisions back from the current one
}

func (c cmd) apply(s *Store) {
	switch {
	case c.txn != nil:
		_, _ = s.Txn(*c.txn, 4)
	case c.grant != 0:
		_ = s.Grant(c.grant, time.Duration(c.grant)*time.Second)
	case c.revoke != 0:
		_, _ = s.Revoke(c.revoke)
	default:
		_ = s.Compact(s.Rev() - c.compact)
	}
}

func genCmd(t *rapid.T) cmd {
	key := rapid.SampledFrom([]string{"a", "a/b", "b", "c/1", "c/2"})
	leaseID := rapid.Int64Range(1, 3)
	switch rapid.IntRange(0, 9).Draw(t, "kind") {
	case 0:
		return cmd{grant: kv.LeaseID(leaseID.Draw(t, "grant"))}
	case 1:
		return cmd{revoke: kv.LeaseID(leaseID.Draw(t, "revoke"))}
	case 2:
		return cmd{compact: rapid.Int64Range(0, 5).Draw(t, "compact")}
	}
	op := rapid.Custom(func(t *rapid.T) kv.Op {
		k := key.Draw(t, "key")
		switch rapid.IntRange(0, 3).Draw(t, "op") {
		case 0:
			return kv.OpDelete(k)
		case 1:
			return kv.OpGet(k)
		case 2:
			return kv.OpPutLease(k, []byte(rapid.String().Draw(t, "v")), kv.LeaseID(rapid.Int64Range(0, 3).Draw(t, "lease")))
		}
		return kv.OpPut(k, []byte(rapid.String().Draw(t, "v")))
	})
	cmp := rapid.Custom(func(t *rapid.T) kv.Cmp {
		k := key.Draw(t, "key")
		r := kv.CmpResult(rapid.IntRange(1, 4).Draw(t, "result"))
		switch rapid.IntRange(0, 2).Draw(t, "cmp") {
		case 0:
			return kv.CmpValue(k, r, []byte(rapid.String().Draw(t, "v")))
		case 1:
			return kv.CmpVersion(k, r, rapid.Int64Range(0, 3).Draw(t, "n"))
		}
		return kv.CmpModRevision(k, r, rapid.Int64Range(0, 20).Draw(t, "n"))
	})
	return cmd{txn: &kv.Txn{
		If:   rapid.SliceOfN(cmp, 0, 2).Draw(t, "if"),
		Then: rapid.SliceOfN(op, 0, 5).Draw(t, "then"),
		Else: rapid.SliceOfN(op, 0, 5).Draw(t, "else"),
	}}
}

// dump is a readable form of the whole state, for failure messages.
func dump(s *Store) string {
	kvs, rev := s.List("")
	return fmt.Sprintf("rev %d compact %d keys %+v leases %+v", rev, s.CompactRev(), kvs, s.Leases())
}

// Two stores fed the same calls are equal; a store restored from a snapshot
// of one of them at any point, then fed the rest, is equal too; and a
// watcher that crosses the Restore sees exactly the events of a watcher on
// the original store.
func TestStoreDeterminismAndSnapshot(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		cmds := rapid.SliceOfN(rapid.Custom(genCmd), 1, 60).Draw(rt, "cmds")
		cut := rapid.IntRange(0, len(cmds)).Draw(rt, "cut")
		a, b, c := NewStore(), NewStore(), NewStore()
		defer a.Close()
		defer b.Close()
		defer c.Close()
		wa := a.Watch(t.Context(), "", 1)
		wc := c.Watch(t.Context(), "", 1)
		for _, cm := range cmds[:cut] {
			cm.apply(a)
			cm.apply(b)
		}
		var snap bytes.Buffer
		if err := a.Snapshot(&snap); err != nil {
			rt.Fatal(err)
		}
		if err := c.Restore(&snap); err != nil {
			rt.Fatal(err)
		}
		if a.Hash() != c.Hash() {
			rt.Fatalf("hash differs after restore:\n%s\n%s", dump(a), dump(c))
		}
		for _, cm := range cmds[cut:] {
			cm.apply(a)
			cm.apply(b)
			cm.apply(c)
		}
		if a.Hash() != b.Hash() || dump(a) != dump(b) {
			rt.Fatalf("same calls, different stores:\n%s\n%s", dump(a), dump(b))
		}
		if a.Hash() != c.Hash() || dump(a) != dump(c) {
			rt.Fatalf("restored store differs:\n%s\n%s", dump(a), dump(c))
		}
		// Both watchers either end compacted at the same point or see
		// the same events.
		ea, erra := readUntil(t, wa, a.Rev())
		ec, errc := readUntil(t, wc, c.Rev())
		if fmt.Sprint(ea) != fmt.Sprint(ec) && erra == nil && errc == nil {
			rt.Fatalf("watch events differ:\n%v\n%v", ea, ec)
		}
		if erra == nil && errc == nil {
			return
		}
		// c's watcher started on an empty store at rev 1: after a
		// Restore that went past it with no history, it must end
		// compacted, and never with a gap.
		if errc != nil && !errors.Is(errc, kv.ErrCompacted) {
			rt.Fatalf("restored watcher: %v", errc)
		}
		if erra != nil && !errors.Is(erra, kv.ErrCompacted) {
			rt.Fatalf("watcher: %v", erra)
		}
	})
}

// readUntil reads events up to revision rev, or until an error. It also
// checks the revisions are in order, with no duplicate.
func readUntil(t *testing.T, w kv.WatchChan, rev int64) ([]string, error) {
	var out []string
	last := int64(1) // revision 1, the empty store, has no events
	for last < rev {
		select {
		case r, ok := <-w:
			if !ok {
				return out, fmt.Errorf("closed at %d", last)
			}
			if r.Err != nil {
				return out, r.Err
			}
			for _, ev := range r.Events {
				if ev.Revision() < last {
					t.Errorf("revision %d after %d", ev.Revision(), last)
				}
				last = ev.Revision()
				out = append(out, fmt.Sprintf("%v %s %d %d %q", ev.Type, ev.KV.Key, last, ev.KV.Version, ev.KV.Value))
			}
		case <-time.After(waitTimeout):
			t.Fatalf("watcher stuck at %d, want %d", last, rev)
		}
	}
	return out, nil
}

func TestSnapshotRestoreWatchers(t *testing.T) {
	src := NewStore()
	defer src.Close()
	for i := range 10 {
		mustTxn(t, src, kv.Txn{Then: []kv.Op{kv.OpPut(fmt.Sprint("k", i), nil)}})
	}
	if err := src.Grant(5, time.Second); err != nil {
		t.Fatal(err)
	}
	mustTxn(t, src, kv.Txn{Then: []kv.Op{kv.OpPutLease("leased", []byte("x"), 5)}}) // rev 12
	if err := src.Compact(6); err != nil {
		t.Fatal(err)
	}
	var snap bytes.Buffer
	if err := src.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}

	dst := NewStore()
	defer dst.Close()
	for range 4 {
		mustTxn(t, dst, kv.Txn{Then: []kv.Op{kv.OpPut("old", nil)}}) // revs 2..5
	}
	compacted := dst.Watch(t.Context(), "", 6) // needs rev 6: compacted in src
	inHistory := dst.Watch(t.Context(), "", 8)
	ahead := dst.Watch(t.Context(), "", 13)
	if err := dst.Restore(&snap); err != nil {
		t.Fatal(err)
	}
	if dst.Hash() != src.Hash() || dst.Rev() != 12 || dst.CompactRev() != 6 {
		t.Fatalf("restored %s\nwant %s", dump(dst), dump(src))
	}
	if l, ok := dst.Lease(5); !ok || fmt.Sprint(l.Keys) != "[leased]" || l.TTL != time.Second {
		t.Fatalf("restored lease %+v %v", l, ok)
	}
	if err := recvErr(t, compacted); kv.CompactRevision(err) != 6 {
		t.Fatalf("watcher below the restored compact revision: %v", err)
	}
	evs := recvEvents(t, inHistory, 5)
	if evs[0].Revision() != 8 || evs[4].Revision() != 12 || evs[4].KV.Lease != 5 {
		t.Fatalf("watcher in the restored history: %+v", evs)
	}
	mustTxn(t, dst, kv.Txn{Then: []kv.Op{kv.OpPut("new", nil)}})
	if evs := recvEvents(t, ahead, 1); evs[0].Revision() != 13 || evs[0].KV.Key != "new" {
		t.Fatalf("watcher above the restored revision: %+v", evs)
	}
	// Revoke works on the restored lease table.
	if rev, err := dst.Revoke(5); err != nil || rev != 14 {
		t.Fatalf("revoke restored lease: %d %v", rev, err)
	}
}

func TestRestoreRejectsBadSnapshots(t *testing.T) {
	s := NewStore()
	defer s.Close()
	mustTxn(t, s, kv.Txn{Then: []kv.Op{kv.OpPut("k", nil)}})
	before := s.Hash()
	if err := s.Restore(bytes.NewReader([]byte("garbage"))); !errors.Is(err, ErrBadSnapshot) {
		t.Fatalf("garbage: %v", err)
	}
	var buf bytes.Buffer
	bad := snapshot{Format: snapshotFormat, Rev: 3, Keys: []snapKey{{Key: "k", CreateRevision: 2, ModRevision: 2, Version: 1}}}
	// Missing the history of revisions 2 and 3.
	if err := gobEncode(&buf, &bad); err != nil {
		t.Fatal(err)
	}
	if err := s.Restore(&buf); !errors.Is(err, ErrBadSnapshot) {
		t.Fatalf("no history: %v", err)
	}
	if s.Hash() != before {
		t.Fatal("a failed Restore changed the state")
	}
}
