package etcdkv

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/chanwatch/chanwatch/kv"
)

// Grant creates a lease; see kv.Leaser. etcd counts TTLs in whole seconds,
// so ttl is rounded up to a second, and the server raises it to its minimum
// (1.5 election timeouts, 2s with etcd's defaults).
func (k *KV) Grant(ctx context.Context, ttl time.Duration) (kv.LeaseID, error) {
	if ttl <= 0 {
		return kv.NoLease, fmt.Errorf("etcdkv: %w: %v", kv.ErrInvalidTTL, ttl)
	}
	secs := int64((ttl + time.Second - 1) / time.Second)
	var resp *clientv3.LeaseGrantResponse
	err := k.call(ctx, true, func(ctx context.Context) (err error) {
		resp, err = k.cli.Grant(ctx, secs)
		return err
	})
	if err != nil {
		return kv.NoLease, err
	}
	return kv.LeaseID(resp.ID), nil
}

// KeepAliveOnce renews the lease and returns its full TTL; see kv.Leaser.
// While the cluster is unreachable it retries until ctx ends.
func (k *KV) KeepAliveOnce(ctx context.Context, id kv.LeaseID) (time.Duration, error) {
	var resp *clientv3.LeaseKeepAliveResponse
	err := k.call(ctx, false, func(ctx context.Context) (err error) {
		resp, err = k.cli.KeepAliveOnce(ctx, clientv3.LeaseID(id))
		return err
	})
	if err != nil {
		return 0, err
	}
	return time.Duration(resp.TTL) * time.Second, nil
}

// Revoke deletes the lease and its keys in one revision; see kv.Leaser.
func (k *KV) Revoke(ctx context.Context, id kv.LeaseID) error {
	return k.call(ctx, true, func(ctx context.Context) error {
		_, err := k.cli.Revoke(ctx, clientv3.LeaseID(id))
		return err
	})
}

// TimeToLive returns the time left on the lease, in whole seconds as etcd
// reports it; see kv.Leaser.
func (k *KV) TimeToLive(ctx context.Context, id kv.LeaseID) (time.Duration, error) {
	var resp *clientv3.LeaseTimeToLiveResponse
	err := k.call(ctx, false, func(ctx context.Context) (err error) {
		resp, err = k.cli.TimeToLive(ctx, clientv3.LeaseID(id))
		return err
	})
	if err != nil {
		return 0, err
	}
	if resp.TTL == -1 { // etcd's answer for an unknown or expired lease
		return 0, fmt.Errorf("etcdkv: %w: lease %x", kv.ErrLeaseNotFound, int64(id))
	}
	return time.Duration(resp.TTL) * time.Second, nil
}
