package memkv_test

import (
	"context"
	"fmt"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/memkv"
)

func ExampleNew() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := memkv.New()
	defer m.Close()

	// Watch the "channel/1/" prefix from the next revision on.
	w := m.Watch(ctx, "channel/1/", 0)

	// A create-only put, then a delete.
	create := kv.Txn{
		If:   []kv.Cmp{kv.CmpMissing("channel/1/dml_0")},
		Then: []kv.Op{kv.OpPut("channel/1/dml_0", []byte("ToWatch"))},
	}
	if _, err := m.Txn(ctx, create); err != nil {
		panic(err)
	}
	if _, _, err := kv.Delete(ctx, m, "channel/1/dml_0"); err != nil {
		panic(err)
	}

	for n := 0; n < 2; {
		resp := <-w
		for _, ev := range resp.Events {
			fmt.Println(ev.Type, ev.KV.Key, string(ev.KV.Value), ev.Revision())
			n++
		}
	}
	// Output:
	// PUT channel/1/dml_0 ToWatch 2
	// DELETE channel/1/dml_0  3
}
