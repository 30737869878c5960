package channelmgr

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
)

// Errors of the registry API.
var (
	// ErrAlreadyRegistered: Register found the channel already registered.
	ErrAlreadyRegistered = errors.New("channelmgr: channel already registered")
	// ErrNotRegistered: Deregister found no such registered channel.
	ErrNotRegistered = errors.New("channelmgr: channel not registered")
	// ErrNotAssigned: Owner found no assignment key for the channel (it is
	// not registered, or the coordinator has not placed it yet).
	ErrNotAssigned = errors.New("channelmgr: channel not assigned")
	// ErrInvalidOption: New was given an invalid option value.
	ErrInvalidOption = errors.New("channelmgr: invalid option")
	// ErrValueTooLarge: Register refused a spec whose assignment could never
	// be written: AssignmentBytes(spec) exceeds the backend's MaxTxnBytes.
	ErrValueTooLarge = errors.New("channelmgr: channel spec too large for the backend")
)

// AssignmentBytes is the kv.TxnBytes of the largest txn the coordinator may
// have to write for spec's channel alone: a move under the leader guard
// (compares on the registry key, the old and the new assignment key; delete
// the old key, put the new one; read the leader key on failure) whose
// ChannelInfo carries a copy of spec.Vchannel, the widest state, time and
// counters, and a LastError of meta.MaxErrorLen bytes that all need JSON
// escaping. A channel whose AssignmentBytes is within the backend's
// MaxTxnBytes can always be placed. Errors: meta.ErrInvalidChannel.
func AssignmentBytes(spec meta.ChannelSpec) (int, error) {
	if err := spec.Validate(); err != nil {
		return 0, err
	}
	const maxID = math.MaxInt64
	info := meta.ChannelInfo{
		Name:           spec.Name,
		CollectionID:   spec.CollectionID,
		State:          meta.ReleaseFailure,
		StartTime:      time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.FixedZone("", -(23*3600+59*60))),
		AssignRevision: maxID,
		Attempts:       math.MaxInt,
		LastError:      strings.Repeat("<", meta.MaxErrorLen), // escaped as \u003c: 6 bytes each
		Progress:       maxID,
		FailedNode:     maxID,
		Vchannel:       spec.Vchannel,
	}
	val, err := meta.EncodeChannelInfo(info)
	if err != nil {
		return 0, err
	}
	from, to := meta.ChannelKey(maxID, spec.Name), meta.ChannelKey(maxID-1, spec.Name)
	return kv.TxnBytes(kv.Txn{
		If: []kv.Cmp{
			kv.CmpCreateRevision(meta.CoordinatorKey, kv.Equal, maxID),
			kv.CmpModRevision(meta.RegistryKey(spec.Name), kv.Equal, maxID),
			kv.CmpModRevision(from, kv.Equal, maxID),
			kv.CmpMissing(to),
		},
		Then: []kv.Op{kv.OpDelete(from), kv.OpPut(to, val)},
		Else: []kv.Op{kv.OpGet(meta.CoordinatorKey)},
	}), nil
}

// Register records spec under registry/<spec.Name>, create-only: a channel
// is registered once. The leading coordinator then places it on a node.
// Errors: meta.ErrInvalidChannel for a bad name, ErrValueTooLarge when
// AssignmentBytes(spec) exceeds b.MaxTxnBytes() (nothing is written),
// ErrAlreadyRegistered, or the backend's error (kv.ErrUnknownOutcome: retry; a retry that then
// returns ErrAlreadyRegistered may have been registered by the first call).
func Register(ctx context.Context, b kv.KV, spec meta.ChannelSpec) error {
	val, err := meta.EncodeChannelSpec(spec)
	if err != nil {
		return fmt.Errorf("channelmgr: register: %w", err)
	}
	n, err := AssignmentBytes(spec)
	if err != nil {
		return fmt.Errorf("channelmgr: register: %w", err)
	}
	if limit := b.MaxTxnBytes(); n > limit {
		return fmt.Errorf("%w: %q: its assignment txn would be %d bytes (vchannel %d bytes), the backend's MaxTxnBytes is %d",
			ErrValueTooLarge, spec.Name, n, len(spec.Vchannel), limit)
	}
	key := meta.RegistryKey(spec.Name)
	resp, err := b.Txn(ctx, kv.Txn{
		If:   []kv.Cmp{kv.CmpMissing(key)},
		Then: []kv.Op{kv.OpPut(key, val)},
	})
	if err != nil {
		return fmt.Errorf("channelmgr: register %q: %w", spec.Name, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%w: %q", ErrAlreadyRegistered, spec.Name)
	}
	return nil
}

// Deregister deletes registry/<channel>. The leading coordinator then
// releases the channel from its node (ToRelease, wait Released) and deletes
// its assignment key; Deregister does not wait for that. Errors:
// meta.ErrInvalidChannel, ErrNotRegistered, or the backend's error.
func Deregister(ctx context.Context, b kv.KV, channel string) error {
	if err := meta.ValidateChannel(channel); err != nil {
		return fmt.Errorf("channelmgr: deregister: %w", err)
	}
	key := meta.RegistryKey(channel)
	resp, err := b.Txn(ctx, kv.Txn{
		If:   []kv.Cmp{kv.CmpExists(key)},
		Then: []kv.Op{kv.OpDelete(key)},
	})
	if err != nil {
		return fmt.Errorf("channelmgr: deregister %q: %w", channel, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%w: %q", ErrNotRegistered, channel)
	}
	return nil
}

// Owner returns the node that holds channel's assignment key and its
// ChannelInfo; node 0 means the channel waits in channel/remaining/ (no live
// node). The state tells whether the node runs it yet (Watched). It lists
// every assignment (channel/) to find the key, so it is an operator's call,
// not a hot-path one. Errors: meta.ErrInvalidChannel, ErrNotAssigned,
// meta.ErrCorruptValue (the key exists but does not decode), or the
// backend's error.
func Owner(ctx context.Context, b kv.KV, channel string) (int64, meta.ChannelInfo, error) {
	if err := meta.ValidateChannel(channel); err != nil {
		return 0, meta.ChannelInfo{}, fmt.Errorf("channelmgr: owner: %w", err)
	}
	kvs, _, err := b.List(ctx, meta.ChannelPrefix)
	if err != nil {
		return 0, meta.ChannelInfo{}, fmt.Errorf("channelmgr: owner %q: %w", channel, err)
	}
	for _, e := range kvs {
		node, ch, perr := meta.ParseChannelKey(e.Key)
		if perr != nil || ch != channel {
			continue
		}
		info, derr := meta.DecodeChannelInfo(e.Key, e.Value)
		if derr != nil {
			return node, meta.ChannelInfo{}, fmt.Errorf("channelmgr: owner %q: %w", channel, derr)
		}
		return node, info, nil
	}
	return 0, meta.ChannelInfo{}, fmt.Errorf("%w: %q", ErrNotAssigned, channel)
}

// Assignment is one channel's assignment as Assignments reads it.
type Assignment struct {
	// Node is the owner's node ID; 0 for channel/remaining/.
	Node int64
	// Info is the decoded value (zero when Corrupt).
	Info meta.ChannelInfo
	// ModRevision is the key's mod revision.
	ModRevision int64
	// Corrupt is set when the value does not decode.
	Corrupt bool
}

// Assignments returns every channel's assignments in one read (one List of
// channel/ at one revision, which it returns), by channel name: normally
// one per channel; more than one only while something is being repaired.
// Keys that do not parse are skipped; values that do not decode are
// returned with Corrupt set. Print N owners with it rather than N calls to
// Owner, each of which lists every assignment.
func Assignments(ctx context.Context, b kv.KV) (map[string][]Assignment, int64, error) {
	kvs, rev, err := b.List(ctx, meta.ChannelPrefix)
	if err != nil {
		return nil, 0, fmt.Errorf("channelmgr: assignments: %w", err)
	}
	out := make(map[string][]Assignment, len(kvs))
	for _, e := range kvs {
		node, ch, perr := meta.ParseChannelKey(e.Key)
		if perr != nil {
			continue
		}
		a := Assignment{Node: node, ModRevision: e.ModRevision}
		info, derr := meta.DecodeChannelInfo(e.Key, e.Value)
		if derr != nil {
			a.Corrupt = true
		} else {
			a.Info = info
		}
		out[ch] = append(out[ch], a)
	}
	return out, rev, nil
}

// Channels returns the assignments of node nodeID (channel/<nodeID>/), sorted
// by channel name. Values that do not decode are left out and reported in
// the error (wrapping meta.ErrCorruptValue) while the slice still holds every
// value that decoded. Errors: meta.ErrInvalidNodeID, or the backend's error.
func Channels(ctx context.Context, b kv.KV, nodeID int64) ([]meta.ChannelInfo, error) {
	if err := meta.ValidateNodeID(nodeID); err != nil {
		return nil, fmt.Errorf("channelmgr: channels: %w", err)
	}
	return listInfos(ctx, b, meta.NodePrefix(nodeID))
}

// Remaining returns the channels waiting in channel/remaining/ for a live
// node, sorted by name, with the same corrupt-value rule as Channels.
func Remaining(ctx context.Context, b kv.KV) ([]meta.ChannelInfo, error) {
	return listInfos(ctx, b, meta.RemainingPrefix)
}

func listInfos(ctx context.Context, b kv.KV, prefix string) ([]meta.ChannelInfo, error) {
	kvs, _, err := b.List(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("channelmgr: list %s: %w", prefix, err)
	}
	out := make([]meta.ChannelInfo, 0, len(kvs))
	var errs []error
	for _, e := range kvs {
		if _, _, perr := meta.ParseChannelKey(e.Key); perr != nil {
			errs = append(errs, perr)
			continue
		}
		info, derr := meta.DecodeChannelInfo(e.Key, e.Value)
		if derr != nil {
			errs = append(errs, derr)
			continue
		}
		out = append(out, info)
	}
	return out, errors.Join(errs...)
}

// PauseBalance creates control/balance-paused: the coordinator stops
// starting balance moves (moves already started finish). Failover,
// draining, placement of new channels and timeouts go on. Idempotent.
func PauseBalance(ctx context.Context, b kv.KV) error {
	if _, err := kv.Put(ctx, b, meta.BalancePausedKey, nil); err != nil {
		return fmt.Errorf("channelmgr: pause balance: %w", err)
	}
	return nil
}

// ResumeBalance deletes control/balance-paused. Idempotent.
func ResumeBalance(ctx context.Context, b kv.KV) error {
	if _, _, err := kv.Delete(ctx, b, meta.BalancePausedKey); err != nil {
		return fmt.Errorf("channelmgr: resume balance: %w", err)
	}
	return nil
}

// BalancePaused reports whether control/balance-paused exists.
func BalancePaused(ctx context.Context, b kv.KV) (bool, error) {
	_, _, err := b.Get(ctx, meta.BalancePausedKey)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, kv.ErrKeyNotFound):
		return false, nil
	}
	return false, fmt.Errorf("channelmgr: balance paused: %w", err)
}
