package etcdkv_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/chanwatch/chanwatch/internal/etcdembed"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/etcdkv"
)

func ExampleNew() {
	dir, err := os.MkdirTemp("", "etcdkv-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	server, err := etcdembed.Start(dir)
	if err != nil {
		log.Fatal(err)
	}
	defer server.Close()
	cli, err := server.Client()
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close() // the KV never closes the client it was given

	store, err := etcdkv.New(cli, "by-dev/meta", etcdkv.WithMaxTxnOps(server.MaxTxnOps()))
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()

	ctx := context.Background()
	if _, err := kv.Put(ctx, store, "channel/1/ch-a", []byte("ToWatch")); err != nil {
		log.Fatal(err)
	}
	items, _, err := store.List(ctx, "channel/1/")
	if err != nil {
		log.Fatal(err)
	}
	for _, it := range items {
		fmt.Printf("%s = %s\n", it.Key, it.Value)
	}
	// Output:
	// channel/1/ch-a = ToWatch
}
