package etcdkv

import (
	"context"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/chanwatch/chanwatch/kv"
)

// Watch delivers the events on keys with prefix from fromRev on; see
// kv.Watcher for ordering, termination and cancel.
//
// The watch asks the leader (clientv3.WithRequireLeader), so a member cut
// off from its cluster ends it with kv.ErrUnavailable instead of going
// silent; the caller resumes from its last revision + 1. Across a reconnect
// clientv3 resumes the watch by itself at the next revision, so nothing is
// missed or repeated.
//
// fromRev <= 0 costs one read: the current revision is read before Watch
// returns and the watch starts after it, so a write made after Watch
// returns is always delivered (etcd itself would register a watch "from
// now" only when its request reaches the server).
//
// etcd refuses a watch only below its compact revision, while the contract
// refuses one at or below it; the watch starts one revision early to get
// etcd's verdict on fromRev-1 and drops that revision's events.
func (k *KV) Watch(ctx context.Context, prefix string, fromRev int64) kv.WatchChan {
	if err := kv.ValidatePrefix(prefix); err != nil {
		return final(err)
	}
	if k.closed.Err() != nil {
		return final(errClosed)
	}
	if ctx.Err() != nil {
		return final(nil)
	}
	if fromRev <= 0 {
		var resp *clientv3.GetResponse
		err := k.call(ctx, false, func(ctx context.Context) (err error) {
			resp, err = k.cli.Get(ctx, k.full(prefix), clientv3.WithKeysOnly())
			return err
		})
		if ctx.Err() != nil {
			return final(nil)
		}
		if err != nil {
			return final(err)
		}
		fromRev = resp.Header.Revision + 1
	}
	watchRev := fromRev - 1
	if watchRev < 1 {
		watchRev = fromRev // 0 would mean "from now" to etcd
	}

	out := make(chan kv.WatchResponse)
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	stop := context.AfterFunc(k.closed, cancel)
	go func() {
		defer close(out)
		defer stop()
		defer cancel()
		wch := k.cli.Watch(wctx, k.full(prefix), clientv3.WithPrefix(), clientv3.WithRev(watchRev))
		err := k.forward(ctx, wch, out, fromRev)
		// The reason the watch ended, in order of precedence: the caller's
		// cancel (no response), this KV's Close, the engine's error.
		switch {
		case ctx.Err() != nil:
			return
		case k.closed.Err() != nil:
			err = errClosed
		case err == nil && k.cli.Ctx().Err() != nil:
			err = fmt.Errorf("etcdkv: %w: client closed under the watch", kv.ErrClosed)
		case err == nil:
			// clientv3 closed the channel without saying why.
			err = fmt.Errorf("etcdkv: %w: watch channel closed", kv.ErrUnavailable)
		}
		k.logger.Debug("watch ended", zap.String("prefix", prefix), zap.Error(err))
		select {
		case out <- kv.WatchResponse{Err: err}:
		case <-ctx.Done():
		}
	}()
	return out
}

// forward converts wch's responses onto out until the watch ends, and
// returns its terminal error (nil when wch closed or ctx ended).
func (k *KV) forward(ctx context.Context, wch clientv3.WatchChan, out chan<- kv.WatchResponse, fromRev int64) error {
	for wr := range wch {
		if wr.CompactRevision != 0 {
			return fmt.Errorf("etcdkv: watch from %d: %w", fromRev, &kv.CompactedError{CompactRevision: wr.CompactRevision})
		}
		if err := wr.Err(); err != nil {
			return k.convertError(ctx, cancelReasonError(err), false)
		}
		var evs []kv.Event
		for _, ev := range wr.Events {
			if ev.Kv.ModRevision < fromRev {
				continue // the extra revision asked for to check compaction
			}
			evs = append(evs, k.event(ev))
		}
		if len(evs) == 0 {
			continue // created or progress notification
		}
		select {
		case out <- kv.WatchResponse{Events: evs}:
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}

func (k *KV) event(ev *clientv3.Event) kv.Event {
	if ev.Type == mvccpb.DELETE {
		return kv.Event{Type: kv.EventDelete, KV: kv.KeyValue{
			Key:         k.keyValue(ev.Kv).Key,
			ModRevision: ev.Kv.ModRevision,
		}}
	}
	return kv.Event{Type: kv.EventPut, KV: k.keyValue(ev.Kv)}
}

// final returns a closed WatchChan that holds err as its only response, or
// nothing when err is nil.
func final(err error) kv.WatchChan {
	ch := make(chan kv.WatchResponse, 1)
	if err != nil {
		ch <- kv.WatchResponse{Err: err}
	}
	close(ch)
	return ch
}

// cancelReasonError recovers the gRPC status of a watch the server
// cancelled: clientv3 passes the reason on as text inside another status
// ("... desc = rpc error: code = PermissionDenied desc = ..."), which
// convertError could not map. Other errors come back unchanged.
func cancelReasonError(err error) error {
	const marker = "rpc error: code = "
	text := err.Error()
	i := strings.LastIndex(text, marker)
	if i < 0 {
		return err
	}
	name, desc, _ := strings.Cut(text[i+len(marker):], " desc = ")
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		if c.String() == name {
			return status.Error(c, desc)
		}
	}
	return err
}
