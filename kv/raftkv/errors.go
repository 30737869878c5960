package raftkv

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/raft"

	"github.com/chanwatch/chanwatch/kv"
)

// errNotLeader: the node asked is not (or no longer) the leader, and the
// request was not applied; the caller finds the leader and tries again. It
// never leaves the package: after the retry budget it becomes
// kv.ErrUnavailable.
var errNotLeader = errors.New("raftkv: not the leader")

// wireSentinels are the errors whose identity survives forwarding, by bit
// position. Append only: nodes of different versions exchange the bits.
var wireSentinels = []error{
	kv.ErrKeyNotFound,
	kv.ErrCompacted,
	kv.ErrFutureRev,
	kv.ErrTxnTooLarge,
	kv.ErrInvalidTxn,
	kv.ErrLeaseNotFound,
	kv.ErrInvalidTTL,
	kv.ErrInvalidKey,
	kv.ErrClosed,
	kv.ErrUnavailable,
	kv.ErrUnknownOutcome,
	kv.ErrPermissionDenied,
	errNotLeader,
	context.Canceled,
	context.DeadlineExceeded,
	ErrInvalidConfig,
}

// wireError carries an error across a forwarded call: its text, which
// sentinels it wraps, and the compact revision of a *kv.CompactedError.
type wireError struct {
	Msg        string
	Is         uint64
	CompactRev int64
}

func toWire(err error) *wireError {
	if err == nil {
		return nil
	}
	w := &wireError{Msg: err.Error(), CompactRev: kv.CompactRevision(err)}
	for i, s := range wireSentinels {
		if errors.Is(err, s) {
			w.Is |= 1 << i
		}
	}
	return w
}

func (w *wireError) err() error {
	if w == nil {
		return nil
	}
	e := &remoteError{msg: w.Msg}
	for i, s := range wireSentinels {
		if w.Is&(1<<i) != 0 {
			e.is = append(e.is, s)
		}
	}
	if w.CompactRev != 0 {
		e.is = append(e.is, &kv.CompactedError{CompactRevision: w.CompactRev})
	}
	return e
}

// remoteError is an error returned by the leader, with its sentinels.
type remoteError struct {
	msg string
	is  []error
}

func (e *remoteError) Error() string   { return e.msg }
func (e *remoteError) Unwrap() []error { return e.is }

// applyError maps the error of a raft Apply future. Errors raft returns
// before the entry reached the log (not leader, leadership transfer,
// enqueue timeout) mean it was not applied: errNotLeader, so the caller
// retries on the leader. Errors after it (leadership lost, shutdown) leave
// the outcome unknown: the entry may still commit under the next leader.
func applyError(err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader),
		errors.Is(err, raft.ErrLeadershipTransferInProgress),
		errors.Is(err, raft.ErrEnqueueTimeout):
		return fmt.Errorf("%w: %w", errNotLeader, err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return fmt.Errorf("%w: node shut down while committing, the write may or may not apply: %w", kv.ErrUnknownOutcome, kv.ErrClosed)
	default:
		return fmt.Errorf("%w: the write may or may not apply: %w", kv.ErrUnknownOutcome, err)
	}
}

// verifyError maps the error of VerifyLeader or a membership change: all
// of these say the node cannot act as leader now.
func verifyError(err error) error {
	switch {
	case errors.Is(err, raft.ErrRaftShutdown):
		return kv.ErrClosed
	case errors.Is(err, raft.ErrNotLeader),
		errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress),
		errors.Is(err, raft.ErrEnqueueTimeout):
		return fmt.Errorf("%w: %w", errNotLeader, err)
	}
	return err
}
