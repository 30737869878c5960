package etcdkv

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/chanwatch/chanwatch/kv"
)

var errClosed = fmt.Errorf("etcdkv: %w", kv.ErrClosed)

// convertError maps the error of a clientv3 call made with ctx onto the
// sentinels of package kv, keeping the engine's text. write marks a request
// that changes state: when it fails in a way that leaves open whether the
// server applied it (context end, lost connection, leader trouble, Close),
// the error also wraps kv.ErrUnknownOutcome. It is the only place that knows
// etcd's errors.
//
// A *kv.CompactedError made here carries CompactRevision 0 (unknown): etcd's
// error does not say. Watch and Compact fill it in where they can.
func (k *KV) convertError(ctx context.Context, err error, write bool) error {
	if err == nil {
		return nil
	}
	wrap := func(sentinel error) error {
		if err.Error() == sentinel.Error() {
			return fmt.Errorf("etcdkv: %w", sentinel)
		}
		return fmt.Errorf("etcdkv: %w: %v", sentinel, err)
	}
	ambiguous := func(sentinel error) error {
		if !write {
			return wrap(sentinel)
		}
		if err.Error() == sentinel.Error() {
			return fmt.Errorf("etcdkv: %w (%w)", sentinel, kv.ErrUnknownOutcome)
		}
		return fmt.Errorf("etcdkv: %w (%w): %v", sentinel, kv.ErrUnknownOutcome, err)
	}

	// Why the call ended, when it ended on our side.
	switch {
	case ctx.Err() != nil && errors.Is(context.Cause(ctx), kv.ErrClosed):
		return ambiguous(kv.ErrClosed) // this KV was closed mid-call
	case k.cli.Ctx().Err() != nil:
		return ambiguous(kv.ErrClosed) // the caller closed the client
	case ctx.Err() != nil:
		return ambiguous(ctx.Err())
	}

	// Server errors arrive as rpctypes.EtcdError from clientv3's unary
	// calls; normalise raw gRPC statuses (watch, keep-alive) the same way.
	e := rpctypes.Error(err)
	code := codes.Unknown
	var ee rpctypes.EtcdError
	if errors.As(e, &ee) {
		code = ee.Code()
	} else if s, ok := status.FromError(e); ok {
		code = s.Code()
	}
	switch {
	case errors.Is(e, rpctypes.ErrCompacted):
		return wrap(&kv.CompactedError{})
	case errors.Is(e, rpctypes.ErrFutureRev):
		return wrap(kv.ErrFutureRev)
	case errors.Is(e, rpctypes.ErrTooManyOps), errors.Is(e, rpctypes.ErrRequestTooLarge):
		return wrap(kv.ErrTxnTooLarge)
	case code == codes.ResourceExhausted && strings.Contains(err.Error(), "trying to send message larger than max"):
		// The client's MaxCallSendMsgSize: refused before sending.
		return wrap(kv.ErrTxnTooLarge)
	case code == codes.ResourceExhausted && write && strings.Contains(err.Error(), "message larger than max"):
		// "received message larger than max" is either the server's gRPC
		// limit refusing the request (not applied) or this client
		// refusing the response (applied). Too large either way: the same
		// request must not be resent as it is, and its outcome is open.
		return fmt.Errorf("etcdkv: %w (%w): %v", kv.ErrTxnTooLarge, kv.ErrUnknownOutcome, err)
	case errors.Is(e, rpctypes.ErrDuplicateKey):
		return wrap(kv.ErrInvalidTxn)
	case errors.Is(e, rpctypes.ErrEmptyKey):
		return wrap(kv.ErrInvalidKey)
	case errors.Is(e, rpctypes.ErrLeaseNotFound):
		return wrap(kv.ErrLeaseNotFound)
	case errors.Is(e, rpctypes.ErrLeaseTTLTooLarge):
		return wrap(kv.ErrInvalidTTL)
	case errors.Is(e, rpctypes.ErrPermissionDenied),
		errors.Is(e, rpctypes.ErrAuthFailed),
		errors.Is(e, rpctypes.ErrInvalidAuthToken),
		errors.Is(e, rpctypes.ErrUserNotFound),
		code == codes.PermissionDenied, code == codes.Unauthenticated:
		return wrap(kv.ErrPermissionDenied)
	case errors.Is(e, rpctypes.ErrNoSpace):
		// Not transient: the cluster is read-only until an operator
		// compacts, defragments and disarms the alarm. No kv sentinel fits.
		return fmt.Errorf("etcdkv: %w", err)
	case errors.Is(e, clientv3.ErrNoAvailableEndpoints),
		errors.Is(e, rpctypes.ErrNotLeader),
		errors.Is(e, rpctypes.ErrTooManyRequests),
		code == codes.Unavailable,                              // no leader, leader changed, timeouts, no connection
		code == codes.Canceled, code == codes.DeadlineExceeded: // ended by the server, not by ctx
		return ambiguous(kv.ErrUnavailable)
	}
	return fmt.Errorf("etcdkv: %w", err)
}
