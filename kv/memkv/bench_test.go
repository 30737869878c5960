package memkv

import (
	"fmt"
	"testing"

	"github.com/chanwatch/chanwatch/kv"
)

// BenchmarkStoreTxn measures one-put txns on a store of 1000 keys, with the
// whole history kept.
func BenchmarkStoreTxn(b *testing.B) {
	s := NewStore()
	defer s.Close()
	val := make([]byte, 100)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		txn := kv.Txn{
			If:   []kv.Cmp{kv.CmpVersion(fmt.Sprint("k/", i%1000), kv.Greater, -1)},
			Then: []kv.Op{kv.OpPut(fmt.Sprint("k/", i%1000), val)},
		}
		if _, err := s.Txn(txn, DefaultMaxTxnOps); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkWatchCatchUp measures a watcher reading a history of b.N
// revisions after the writes.
func BenchmarkWatchCatchUp(b *testing.B) {
	s := NewStore()
	defer s.Close()
	val := make([]byte, 100)
	for i := range b.N {
		if _, err := s.Txn(kv.Txn{Then: []kv.Op{kv.OpPut(fmt.Sprint("k/", i%1000), val)}}, DefaultMaxTxnOps); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	w := s.Watch(b.Context(), "k/", 1)
	for n := 0; n < b.N; {
		r := <-w
		if r.Err != nil {
			b.Fatal(r.Err)
		}
		n += len(r.Events)
	}
}
