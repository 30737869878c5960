//go:build raft

package main

import (
	"context"

	"go.uber.org/zap"

	"github.com/chanwatch/chanwatch/bench"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/raftkv"
)

// Built with -tags raft, the binary carries the embedded raft backend (the
// demo's --backend=raft, bench's B4). It is left out by default because
// hashicorp/raft links package testing.
func init() {
	bench.StartRaft = func(ctx context.Context, dir string, noFsync bool, lg *zap.Logger) (func(int) kv.Backend, func() error, error) {
		return raftkv.StartClients(ctx, dir, 3, raftkv.WithUnsafeNoFsync(noFsync), raftkv.WithLogger(lg))
	}
}
