package raftkv

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/chanwatch/chanwatch/kv"
)

// Client is a handle on a Node with a root and a Close of its own, as one
// process among several sharing the node would hold. Its keys live under
// root + "/" in the cluster's keyspace (the whole keyspace for root ""):
// two Clients on different roots never see each other's keys, even when
// one root is a string prefix of the other. Revisions, leases and
// compaction are the cluster's, shared by every root, as on etcd. Closing a
// Client fails its calls, in flight and later, and ends its open watches
// with kv.ErrClosed, and leaves the node and its other handles running;
// leases granted through it live on until they expire, as a crashed
// process's would. All methods are safe for concurrent use.
type Client struct {
	n      *Node
	prefix string          // root + "/", or ""
	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	once   sync.Once
}

var _ kv.Backend = (*Client)(nil)

// Client returns a new handle on n over the whole keyspace.
func (n *Node) Client() *Client {
	c, _ := n.ClientAt("") // the empty root is always valid
	return c
}

// ClientAt returns a new handle on n whose keys live under root (see
// Client). Errors: kv.ErrInvalidKey for a root that starts or ends with
// '/'.
func (n *Node) ClientAt(root string) (*Client, error) {
	if strings.HasPrefix(root, "/") || strings.HasSuffix(root, "/") {
		return nil, fmt.Errorf("%w: root %q must not start or end with '/'", kv.ErrInvalidKey, root)
	}
	prefix := ""
	if root != "" {
		prefix = root + "/"
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Client{n: n, prefix: prefix, ctx: ctx, cancel: cancel}, nil
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

// Get is Node.Get under the root.
func (c *Client) Get(ctx context.Context, key string) (item kv.KeyValue, rev int64, err error) {
	if err := kv.ValidateKey(key); err != nil {
		return kv.KeyValue{}, 0, err
	}
	err = c.call(ctx, func(ctx context.Context) error {
		item, rev, err = c.n.Get(ctx, c.prefix+key)
		return err
	})
	c.strip(&item)
	return item, rev, err
}

// List is Node.List under the root.
func (c *Client) List(ctx context.Context, prefix string) (items []kv.KeyValue, rev int64, err error) {
	if err := kv.ValidatePrefix(prefix); err != nil {
		return nil, 0, err
	}
	err = c.call(ctx, func(ctx context.Context) error {
		items, rev, err = c.n.List(ctx, c.prefix+prefix)
		return err
	})
	for i := range items {
		c.strip(&items[i])
	}
	return items, rev, err
}

// Txn is Node.Txn under the root.
func (c *Client) Txn(ctx context.Context, t kv.Txn) (resp kv.TxnResponse, err error) {
	// Checked as the caller wrote it, so errors name the caller's keys.
	if err := kv.ValidateTxn(t, c.n.MaxTxnOps()); err != nil {
		return kv.TxnResponse{}, err
	}
	if err := kv.ValidateTxnBytes(t, c.MaxTxnBytes()); err != nil {
		return kv.TxnResponse{}, err
	}
	if c.prefix != "" {
		t = kv.Txn{If: c.cmps(t.If), Then: c.ops(t.Then), Else: c.ops(t.Else)}
	}
	err = c.call(ctx, func(ctx context.Context) error {
		resp, err = c.n.Txn(ctx, t)
		return err
	})
	for _, r := range resp.Responses {
		if r.KV != nil {
			c.strip(r.KV)
		}
	}
	return resp, err
}

func (c *Client) cmps(in []kv.Cmp) []kv.Cmp {
	out := make([]kv.Cmp, len(in))
	for i, cmp := range in {
		cmp.Key = c.prefix + cmp.Key
		out[i] = cmp
	}
	return out
}

func (c *Client) ops(in []kv.Op) []kv.Op {
	out := make([]kv.Op, len(in))
	for i, o := range in {
		o.Key = c.prefix + o.Key
		out[i] = o
	}
	return out
}

// strip makes a key relative to the root again.
func (c *Client) strip(item *kv.KeyValue) {
	item.Key = strings.TrimPrefix(item.Key, c.prefix)
}

// MaxTxnOps is Node.MaxTxnOps.
func (c *Client) MaxTxnOps() int { return c.n.MaxTxnOps() }

// MaxTxnBytes is Node.MaxTxnBytes less what the root adds to the keys of
// the largest Txn (3 × MaxTxnOps keys), so that any Txn within it is within
// the node's limit once its keys carry the root.
func (c *Client) MaxTxnBytes() int {
	return max(1, c.n.MaxTxnBytes()-3*c.n.MaxTxnOps()*len(c.prefix))
}

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

// Watch is Node.Watch under the root; closing the handle ends the watch
// with kv.ErrClosed.
func (c *Client) Watch(ctx context.Context, prefix string, fromRev int64) kv.WatchChan {
	if err := kv.ValidatePrefix(prefix); err != nil {
		return failedWatch(err)
	}
	if c.ctx.Err() != nil {
		return failedWatch(kv.ErrClosed)
	}
	inner, cancel := context.WithCancel(ctx)
	in := c.n.Watch(inner, c.prefix+prefix, fromRev)
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
				for i := range r.Events {
					c.strip(&r.Events[i].KV)
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
