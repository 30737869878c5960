package bench

import (
	"context"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv/memkv"
	"go.uber.org/zap"
)

// BenchmarkColdStartMem is B3's coordinator side without etcd: a cold
// coordinator's campaign, list, decode and first pass over 100,000 Watched
// channels (200 B payloads, 100 nodes) held in memkv, so that a CPU profile
// (-cpuprofile) shows the coordinator's own cost, not the store's.
func BenchmarkColdStartMem(b *testing.B) {
	const channels = 100000
	store := memkv.New()
	defer store.Close()
	ctx := context.Background()
	if _, err := load(ctx, store, channels, 100, 200, time.Hour); err != nil {
		b.Fatal(err)
	}
	e := &Env{opts: Options{Logger: zap.NewNop()}, nodeTTL: nodeTTL}
	for b.Loop() {
		cli := store.NewClient()
		co, err := startCoordinator(cli, e)
		if err != nil {
			b.Fatal(err)
		}
		if err := co.waitWatched(ctx, channels); err != nil {
			b.Fatal(err)
		}
		if err := co.stop(); err != nil && ctx.Err() == nil && err != context.Canceled {
			b.Logf("coordinator stopped: %v", err)
		}
		_ = cli.Close()
	}
}
