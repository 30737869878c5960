package nodewatch_test

import (
	"context"
	"fmt"
	"sync"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/memkv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/nodewatch"
)

// flowgraphs is what a DataNode keeps: one running pipeline per vchannel.
type flowgraphs struct {
	mu      sync.Mutex
	running map[string]*pipeline
}

type pipeline struct {
	token int64 // the assignment's fencing token
	stop  context.CancelFunc
	done  chan struct{}
}

// consume reads the vchannel until the assignment ends, stamping every
// write with p.token.
func (p *pipeline) consume(ctx context.Context) {
	defer close(p.done)
	<-ctx.Done()
}

// Watch restores the channel from info.Vchannel (seek position, segments)
// and starts consuming. Everything it writes downstream carries
// info.AssignRevision, so a stale owner's writes can be told apart.
func (f *flowgraphs) Watch(ctx context.Context, info meta.ChannelInfo) error {
	// Work started here lives on ctx: the node cancels it when the
	// assignment ends, even before Release is called.
	runCtx, stop := context.WithCancel(ctx)
	p := &pipeline{token: info.AssignRevision, stop: stop, done: make(chan struct{})}
	go p.consume(runCtx)
	f.mu.Lock()
	f.running[info.Name] = p
	f.mu.Unlock()
	fmt.Printf("watch %s (collection %d, from %s)\n", info.Name, info.CollectionID, info.Vchannel)
	return nil // Watched; an error would report WatchFailure
}

// Release stops the pipeline. It is idempotent: a second call finds nothing.
func (f *flowgraphs) Release(_ context.Context, channel string) error {
	f.mu.Lock()
	p := f.running[channel]
	delete(f.running, channel)
	f.mu.Unlock()
	if p != nil {
		p.stop()
		<-p.done // Release returns once nothing runs
	}
	fmt.Printf("release %s\n", channel)
	return nil
}

// A DataNode runs a Node with its Handler; the coordinator (channelmgr,
// played here by a few direct writes) assigns and releases channels.
func Example() {
	store := memkv.New() // production: etcdkv.New(etcdClient, "by-dev/meta")
	defer store.Close()

	node, err := nodewatch.New(store, &flowgraphs{running: map[string]*pipeline{}},
		nodewatch.WithAddr("datanode-1:21124"))
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- node.Run(ctx) }()

	// --- what the coordinator does ---
	sess := await(store, meta.NodeSessionPrefix, func(kv.KeyValue) bool { return true })
	id, _ := meta.ParseNodeSessionKey(sess.Key)
	fmt.Println("node registered:", id)

	const ch = "by-dev-rootcoord-dml_0_100v0"
	assign := meta.ChannelInfo{Name: ch, CollectionID: 100, State: meta.ToWatch, Vchannel: []byte(`{"seek":"pos-42"}`)}
	put(store, meta.ChannelKey(id, ch), assign)
	watched := await(store, meta.ChannelKey(id, ch), stateIs(meta.Watched))
	fmt.Println("coordinator sees:", decode(watched).State)

	assign.State = meta.ToRelease
	put(store, meta.ChannelKey(id, ch), assign)
	released := await(store, meta.ChannelKey(id, ch), stateIs(meta.Released))
	fmt.Println("coordinator sees:", decode(released).State)
	// --- end of the coordinator ---

	cancel()
	if err := <-done; err != nil {
		panic(err)
	}
	// Output:
	// node registered: 1
	// watch by-dev-rootcoord-dml_0_100v0 (collection 100, from {"seek":"pos-42"})
	// coordinator sees: Watched
	// release by-dev-rootcoord-dml_0_100v0
	// coordinator sees: Released
}

func put(b kv.KV, key string, info meta.ChannelInfo) {
	val, err := meta.EncodeChannelInfo(info)
	if err != nil {
		panic(err)
	}
	if _, err := kv.Put(context.Background(), b, key, val); err != nil {
		panic(err)
	}
}

func decode(v kv.KeyValue) meta.ChannelInfo {
	info, err := meta.DecodeChannelInfo(v.Key, v.Value)
	if err != nil {
		panic(err)
	}
	return info
}

func stateIs(s meta.State) func(kv.KeyValue) bool {
	return func(v kv.KeyValue) bool {
		info, err := meta.DecodeChannelInfo(v.Key, v.Value)
		return err == nil && info.State == s
	}
}

// await lists prefix, then watches it, until a key satisfies ok.
func await(b kv.Backend, prefix string, ok func(kv.KeyValue) bool) kv.KeyValue {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kvs, rev, err := b.List(ctx, prefix)
	if err != nil {
		panic(err)
	}
	for _, v := range kvs {
		if ok(v) {
			return v
		}
	}
	for resp := range b.Watch(ctx, prefix, rev+1) {
		if resp.Err != nil {
			panic(resp.Err)
		}
		for _, e := range resp.Events {
			if e.Type == kv.EventPut && ok(e.KV) {
				return e.KV
			}
		}
	}
	panic("watch ended")
}
