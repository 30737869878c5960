package session_test

import (
	"context"
	"fmt"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/memkv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/session"
)

// A coordinator campaigns on its session and fences every write with the
// leadership's Guard; it stops acting when Done closes.
func ExampleCampaign() {
	ctx := context.Background()
	store := memkv.New()
	defer store.Close()

	s, err := session.New(ctx, store) // 10s TTL, renewed every TTL/3
	if err != nil {
		panic(err)
	}
	defer s.Close(ctx)

	l, err := session.Campaign(ctx, store, s, meta.CoordSession{ID: "datacoord-1"})
	if err != nil {
		panic(err)
	}
	resp, err := store.Txn(ctx, kv.Txn{
		If:   []kv.Cmp{l.Guard()}, // plus the txn's own compares
		Then: []kv.Op{kv.OpPut("channel/remaining/dml_0", []byte("..."))},
	})
	if err != nil {
		panic(err)
	}
	fmt.Println("write applied:", resp.Succeeded)

	// Whatever ends the leadership (session loss, key deleted, Resign)
	// closes Done; a write after that fails its Guard.
	if err := l.Resign(ctx); err != nil {
		panic(err)
	}
	<-l.Done()
	resp, _ = store.Txn(ctx, kv.Txn{If: []kv.Cmp{l.Guard()}, Then: []kv.Op{kv.OpPut("x", nil)}})
	fmt.Println("write after resigning applied:", resp.Succeeded)
	// Output:
	// write applied: true
	// write after resigning applied: false
}
