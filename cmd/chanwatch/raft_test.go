//go:build !raft

package main

import (
	"context"

	"go.uber.org/zap"

	"github.com/chanwatch/chanwatch/bench"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/raftkv"
)

// The tests link the raft backend, as a -tags raft build does (raft.go).
func init() {
	bench.StartRaft = func(ctx context.Context, dir string, noFsync bool, lg *zap.Logger) (func(int) kv.Backend, func() error, error) {
		return raftkv.StartClients(ctx, dir, 3, raftkv.WithUnsafeNoFsync(noFsync), raftkv.WithLogger(lg))
	}
}
