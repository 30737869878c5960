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

// warmFlowgraphs adds warm handoff to flowgraphs: Prepare loads what a
// Watch would (segments, a subscription that does not consume yet) and
// keeps it; Watch then only activates it.
type warmFlowgraphs struct {
	*flowgraphs
	pmu      sync.Mutex
	prepared map[string]bool
}

// Prepare readies the channel without owning it: nothing it does needs
// the fencing token (info.AssignRevision is 0 here).
func (f *warmFlowgraphs) Prepare(ctx context.Context, info meta.ChannelInfo) error {
	// A long load calls nodewatch.ReportProgress(ctx) as it advances.
	f.pmu.Lock()
	f.prepared[info.Name] = true
	f.pmu.Unlock()
	fmt.Printf("prepare %s\n", info.Name)
	return nil // Prepared; an error would report PrepareFailure
}

// Unprepare drops a preparation no Watch will use.
func (f *warmFlowgraphs) Unprepare(_ context.Context, channel string) error {
	f.pmu.Lock()
	delete(f.prepared, channel)
	f.pmu.Unlock()
	fmt.Printf("unprepare %s\n", channel)
	return nil
}

// Watch uses the preparation when there is one; it must work without.
func (f *warmFlowgraphs) Watch(ctx context.Context, info meta.ChannelInfo) error {
	f.pmu.Lock()
	warm := f.prepared[info.Name]
	delete(f.prepared, info.Name)
	f.pmu.Unlock()
	fmt.Printf("activate %s (warm %v)\n", info.Name, warm)
	return f.flowgraphs.Watch(ctx, info)
}

// A handler that implements nodewatch.Preparer takes part in warm
// handoffs: the coordinator (played here by direct writes) asks it to
// prepare a channel before the channel's current owner releases it, then
// assigns it, withdrawing the request in the same txn.
func ExamplePreparer() {
	store := memkv.New()
	defer store.Close()
	h := &warmFlowgraphs{flowgraphs: &flowgraphs{running: map[string]*pipeline{}}, prepared: map[string]bool{}}
	node, err := nodewatch.New(store, h)
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- node.Run(ctx) }()

	// --- what the coordinator does ---
	sess := await(store, meta.NodeSessionPrefix, func(kv.KeyValue) bool { return true })
	id, _ := meta.ParseNodeSessionKey(sess.Key)
	s, _ := meta.DecodeNodeSession(sess.Key, sess.Value)
	fmt.Println("node advertises prepare:", s.Prepare)

	const ch = "by-dev-rootcoord-dml_0_100v0"
	req, _ := meta.EncodePrepareInfo(meta.ChannelInfo{Name: ch, CollectionID: 100, State: meta.ToPrepare})
	if _, err := kv.Put(ctx, store, meta.PrepareKey(id, ch), req); err != nil {
		panic(err)
	}
	await(store, meta.PrepareKey(id, ch), func(v kv.KeyValue) bool {
		info, err := meta.DecodePrepareInfo(v.Key, v.Value)
		return err == nil && info.State == meta.Prepared
	})
	fmt.Println("coordinator sees: Prepared; the old owner is released now")
	assign, _ := meta.EncodeChannelInfo(meta.ChannelInfo{Name: ch, CollectionID: 100, State: meta.ToWatch})
	if _, err := store.Txn(ctx, kv.Txn{Then: []kv.Op{kv.OpDelete(meta.PrepareKey(id, ch)), kv.OpPut(meta.ChannelKey(id, ch), assign)}}); err != nil {
		panic(err)
	}
	await(store, meta.ChannelKey(id, ch), stateIs(meta.Watched))
	fmt.Println("coordinator sees: Watched")
	// --- end of the coordinator ---

	cancel()
	if err := <-done; err != nil {
		panic(err)
	}
	// Output:
	// node advertises prepare: true
	// prepare by-dev-rootcoord-dml_0_100v0
	// coordinator sees: Prepared; the old owner is released now
	// activate by-dev-rootcoord-dml_0_100v0 (warm true)
	// watch by-dev-rootcoord-dml_0_100v0 (collection 100, from )
	// coordinator sees: Watched
	// release by-dev-rootcoord-dml_0_100v0
}
