package etcdkv

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/chanwatch/chanwatch/kv"
)

// compactProbeTimeout bounds compactRevision; etcd answers a refused watch
// within its ~100ms watcher sync interval.
const compactProbeTimeout = 2 * time.Second

// Compact discards history up to and including rev; see kv.Compactor.
// (etcd still serves reads at rev itself, but a Watch from rev or below
// fails with a *kv.CompactedError, as the contract says.)
//
// Compaction is cluster-wide in etcd: it discards the history of every key
// on the cluster, not just this KV's root, so it also ends (or fails) other
// roots' and other programs' watches and reads that need older revisions.
// Call it from one place that owns the cluster's retention, or leave it to
// etcd's --auto-compaction-* settings.
//
// When rev is at or below the cluster's compact revision the error is a
// *kv.CompactedError carrying that revision when it can be read.
func (k *KV) Compact(ctx context.Context, rev int64) error {
	err := k.call(ctx, true, func(ctx context.Context) error {
		_, err := k.cli.Compact(ctx, rev)
		return err
	})
	// rev > 1 guarantees the cluster's compact revision is above 1, so
	// compactRevision's probe is refused at once.
	if errors.Is(err, kv.ErrCompacted) && rev > 1 {
		if crev := k.compactRevision(ctx); crev > 0 {
			return fmt.Errorf("etcdkv: %w: compact %d", &kv.CompactedError{CompactRevision: crev}, rev)
		}
	}
	return err
}

// compactRevision reads the cluster's compact revision, or returns 0. etcd
// has no request for it, but refuses a watch from revision 1 with it once
// the compact revision is above 1; the timeout covers a cluster where it is
// not, and so the probe would wait for events.
func (k *KV) compactRevision(ctx context.Context) int64 {
	ctx, cancel := context.WithTimeout(ctx, compactProbeTimeout)
	defer cancel()
	stop := context.AfterFunc(k.closed, cancel)
	defer stop()
	for wr := range k.cli.Watch(ctx, k.prefix, clientv3.WithPrefix(), clientv3.WithRev(1)) {
		if wr.CompactRevision != 0 || wr.Err() != nil {
			return wr.CompactRevision
		}
		// Created notifications or events of revisions kept by a
		// compaction at revision 1: keep reading until the refusal.
		if len(wr.Events) > 0 {
			return 0
		}
	}
	return 0
}
