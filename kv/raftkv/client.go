package raftkv

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/chanwatch/chanwatch/kv"
)

// Client is a handle on a Node with a Close of its own, as one process
// among several sharing the node would hold: closing it fails its calls,
// in flight and later, and ends its open watches with kv.ErrClosed, and
// leaves the node and its other handles running. Leases granted through a
// closed Client live on until they expire, as a crashed process's would.
// All methods are safe for concurrent use.
type Client struct {
	n      *Node
	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	once   sync.Once
}

var _ kv.Backend = (*Client)(nil)

// Client returns a new handle on n.
func (n *Node) Client() *Client {
	ctx, cancel := context.WithCancel(context.Background())
	return &Client{n: n, ctx: ctx, cancel: cancel}
}

// Close closes the handle (not the node). Its watches end with a last
// kv.ErrClosed as soon as their consumers read it. Close is idempotent.
func (c *Client) Close() error {
	c.once.Do(c.cancel)
	return nil
}

// call runs f with a context that also ends when the handle closes, and
// makes its error say kv.ErrClosed when that is why it failed.
func (c *Client) call(ctx context.Context, f func(context.Context) error) error {
	if c.ctx.Err() != nil {
		return kv.ErrClosed
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(c.ctx, cancel)
	defer stop()
	err := f(ctx)
	if err != nil && c.ctx.Err() != nil && !errors.Is(err, kv.ErrClosed) {
		err = fmt.Errorf("%w: %w", kv.ErrClosed, err)
	}
	return err
}

// Get is Node.Get.
func (c *Client) Get(ctx context.Context, key string) (item kv.KeyValue, rev int64, err error) {
	err = c.call(ctx, func(ctx context.Context) error {
		item, rev, err = c.n.Get(ctx, key)
		return err
	})
	return item, rev, err
}

// List is Node.List.
func (c *Client) List(ctx context.Context, prefix string) (items []kv.KeyValue, rev int64, err error) {
	err = c.call(ctx, func(ctx context.Context) error {
		items, rev, err = c.n.List(ctx, prefix)
		return err
	})
	return items, rev, err
}

// Txn is Node.Txn.
func (c *Client) Txn(ctx context.Context, t kv.Txn) (resp kv.TxnResponse, err error) {
	err = c.call(ctx, func(ctx context.Context) error {
		resp, err = c.n.Txn(ctx, t)
		return err
	})
	return resp, err
}

// MaxTxnOps is Node.MaxTxnOps.
func (c *Client) MaxTxnOps() int { return c.n.MaxTxnOps() }

// Compact is Node.Compact.
func (c *Client) Compact(ctx context.Context, rev int64) error {
	return c.call(ctx, func(ctx context.Context) error { return c.n.Compact(ctx, rev) })
}

// Grant is Node.Grant.
func (c *Client) Grant(ctx context.Context, ttl time.Duration) (id kv.LeaseID, err error) {
	err = c.call(ctx, func(ctx context.Context) error {
		id, err = c.n.Grant(ctx, ttl)
		return err
	})
	return id, err
}

// KeepAliveOnce is Node.KeepAliveOnce.
func (c *Client) KeepAliveOnce(ctx context.Context, id kv.LeaseID) (ttl time.Duration, err error) {
	err = c.call(ctx, func(ctx context.Context) error {
		ttl, err = c.n.KeepAliveOnce(ctx, id)
		return err
	})
	return ttl, err
}

// Revoke is Node.Revoke.
func (c *Client) Revoke(ctx context.Context, id kv.LeaseID) error {
	return c.call(ctx, func(ctx context.Context) error { return c.n.Revoke(ctx, id) })
}

// TimeToLive is Node.TimeToLive.
func (c *Client) TimeToLive(ctx context.Context, id kv.LeaseID) (left time.Duration, err error) {
	err = c.call(ctx, func(ctx context.Context) error {
		left, err = c.n.TimeToLive(ctx, id)
		return err
	})
	return left, err
}

// Watch is Node.Watch; closing the handle ends the watch with kv.ErrClosed.
func (c *Client) Watch(ctx context.Context, prefix string, fromRev int64) kv.WatchChan {
	if c.ctx.Err() != nil {
		return failedWatch(kv.ErrClosed)
	}
	inner, cancel := context.WithCancel(ctx)
	in := c.n.Watch(inner, prefix, fromRev)
	out := make(chan kv.WatchResponse, 1)
	go func() {
		defer close(out)
		defer cancel()
		for {
			select {
			case r, ok := <-in:
				if !ok {
					return
				}
				select {
				case out <- r:
				case <-ctx.Done():
					return
				case <-c.ctx.Done():
					endWatch(ctx, out)
					return
				}
				if r.Err != nil {
					return
				}
			case <-ctx.Done():
				return
			case <-c.ctx.Done():
				endWatch(ctx, out)
				return
			}
		}
	}()
	return out
}

// endWatch delivers the final kv.ErrClosed, unless the watch's own
// context ends first.
func endWatch(ctx context.Context, out chan<- kv.WatchResponse) {
	select {
	case out <- kv.WatchResponse{Err: kv.ErrClosed}:
	case <-ctx.Done():
	}
}
