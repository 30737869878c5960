package kv

import (
	"errors"
	"fmt"
)

// Sentinel errors. Backends wrap them (with %w) so that errors.Is works the
// same on every backend.
var (
	// ErrKeyNotFound: Get found no such key.
	ErrKeyNotFound = errors.New("kv: key not found")
	// ErrCompacted: a watch or read asked for a revision that has been compacted.
	// The concrete error is a *CompactedError carrying the compact revision.
	ErrCompacted = errors.New("kv: required revision has been compacted")
	// ErrFutureRev: a read or compaction asked for a revision not yet written.
	ErrFutureRev = errors.New("kv: required revision is a future revision")
	// ErrTxnTooLarge: a Txn list holds more than MaxTxnOps entries, or the
	// Txn is larger than MaxTxnBytes (or than the engine's own request
	// limit). Nothing was written; resending the same Txn fails the same
	// way, so split it.
	ErrTxnTooLarge = errors.New("kv: txn too large")
	// ErrInvalidTxn: a Txn branch writes the same key twice, or an op is malformed.
	ErrInvalidTxn = errors.New("kv: invalid txn")
	// ErrLeaseNotFound: the lease does not exist (never granted, revoked or expired).
	ErrLeaseNotFound = errors.New("kv: lease not found")
	// ErrInvalidTTL: a lease TTL <= 0.
	ErrInvalidTTL = errors.New("kv: invalid lease TTL")
	// ErrInvalidKey: an empty key, or one that starts with '/'.
	ErrInvalidKey = errors.New("kv: invalid key")
	// ErrClosed: the backend was closed.
	ErrClosed = errors.New("kv: backend closed")
	// ErrUnavailable: the backend cannot be reached (no leader, no connection).
	ErrUnavailable = errors.New("kv: backend unavailable")
	// ErrUnknownOutcome: a write may or may not have been applied (a timeout or
	// a lost leader after the request was sent). Retry idempotently.
	ErrUnknownOutcome = errors.New("kv: outcome of write unknown")
	// ErrPermissionDenied: the backend refused the credentials or the role.
	ErrPermissionDenied = errors.New("kv: permission denied")
)

// CompactedError ends a watch, or fails a read, that needs history at or
// below the compaction revision. errors.Is(err, ErrCompacted) holds.
type CompactedError struct {
	// CompactRevision is the store's compaction revision: history at or
	// below it is gone. Re-list, then watch from the list revision + 1.
	CompactRevision int64
}

func (e *CompactedError) Error() string {
	return fmt.Sprintf("%v (compact revision %d)", ErrCompacted, e.CompactRevision)
}

// Is reports whether target is ErrCompacted.
func (e *CompactedError) Is(target error) bool { return target == ErrCompacted }

// CompactRevision returns the compact revision carried by err, or 0 when err
// is not (or does not wrap) a *CompactedError.
func CompactRevision(err error) int64 {
	var ce *CompactedError
	if errors.As(err, &ce) {
		return ce.CompactRevision
	}
	return 0
}

// ValidateKey returns ErrInvalidKey (wrapped, naming the key) for an empty
// key or one that starts with '/'.
func ValidateKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalidKey)
	}
	if key[0] == '/' {
		return fmt.Errorf("%w: %q starts with '/'", ErrInvalidKey, key)
	}
	return nil
}

// ValidatePrefix returns ErrInvalidKey for a prefix that starts with '/'.
// The empty prefix is valid and means every key under the backend's root.
func ValidatePrefix(prefix string) error {
	if prefix != "" && prefix[0] == '/' {
		return fmt.Errorf("%w: prefix %q starts with '/'", ErrInvalidKey, prefix)
	}
	return nil
}
