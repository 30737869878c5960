package session

import (
	"context"
	"errors"
	"fmt"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/jonboulle/clockwork"
	"go.uber.org/zap"
)

// judge looks at a key as it is now (nil: deleted, at revision rev) and says
// why it is no longer the follower's ("" while it still is). It may act on
// what it sees (repair the key, say).
type judge func(ctx context.Context, cur *kv.KeyValue, rev int64) string

// followKey watches key from rev, resuming a broken watch with backoff and
// answering a compaction with a read, until judge gives a reason (returned)
// or ctx ends ("" returned). It is how a leader follows its leader key and a
// node its session key.
func followKey(ctx context.Context, b kv.Backend, clock clockwork.Clock, log *zap.Logger, key string, rev int64, j judge) string {
	var retry backoff
	for ctx.Err() == nil {
		why, next, err := followOnce(ctx, b, key, rev, j)
		if why != "" {
			return why
		}
		if next > rev {
			rev = next
			retry.reset()
		}
		if err != nil {
			log.Debug("key watch broken; resuming", zap.String("key", key), zap.Int64("from", rev), zap.Error(err))
		}
		if sleep(ctx, clock, retry.next()) != nil {
			return ""
		}
	}
	return ""
}

// followOnce is one watch of followKey: it returns a reason, or the
// revision to resume from when the watch ends.
func followOnce(ctx context.Context, b kv.Backend, key string, rev int64, j judge) (string, int64, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for resp := range b.Watch(wctx, key, rev) {
		if errors.Is(resp.Err, kv.ErrCompacted) {
			// History is gone: ask the key itself.
			cur, getRev, err := b.Get(ctx, key)
			switch {
			case errors.Is(err, kv.ErrKeyNotFound):
				if why := j(ctx, nil, getRev); why != "" {
					return why, rev, nil
				}
			case err != nil:
				return "", rev, err
			default:
				if why := j(ctx, &cur, getRev); why != "" {
					return why, rev, nil
				}
			}
			return "", getRev + 1, nil
		}
		if resp.Err != nil {
			return "", rev, resp.Err
		}
		for _, e := range resp.Events {
			rev = e.Revision() + 1
			if e.KV.Key != key {
				continue
			}
			cur := &e.KV
			if e.Type == kv.EventDelete {
				cur = nil
			}
			if why := j(ctx, cur, e.Revision()); why != "" {
				return why, rev, nil
			}
		}
	}
	return "", rev, ctx.Err()
}

// deletedAt names a deletion seen at rev.
func deletedAt(what string, rev int64) string {
	return fmt.Sprintf("%s deleted at revision %d", what, rev)
}
