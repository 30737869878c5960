package bench

import (
	"context"

	"go.uber.org/zap"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/raftkv"
)

func init() {
	StartRaft = func(ctx context.Context, dir string, noFsync bool, lg *zap.Logger) (func(int) kv.Backend, func() error, error) {
		return raftkv.StartClients(ctx, dir, 3, raftkv.WithUnsafeNoFsync(noFsync), raftkv.WithLogger(lg))
	}
}
