package session

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"go.uber.org/zap"
)

// AllocateNodeID takes the next node ID from the counter at
// meta.NodeIDCounterKey with a compare-and-swap increment, retrying on
// conflict until ctx is done. IDs start at 1 and are never reused, so a
// new ID's channel prefix is empty:
//
//   - A counter that is missing or does not parse (deleted by hand, a
//     restored backup, garbage) is repaired, with a compare-and-swap on what
//     was read, to the highest node ID present anywhere in the root (session
//     keys and channel/<id>/ keys); the repair is logged.
//   - An ID whose session key exists or whose channel/<id>/ prefix is not
//     empty is skipped (burnt): a dead node's keys are never inherited.
//
// An ambiguous write (kv.ErrUnknownOutcome) may burn an ID, never hand one
// out twice. Errors: the backend's, wrapped; ctx's error when ctx ends.
func AllocateNodeID(ctx context.Context, b kv.KV) (int64, error) {
	return allocateNodeID(ctx, b, zap.NewNop())
}

func allocateNodeID(ctx context.Context, b kv.KV, log *zap.Logger) (int64, error) {
	key := meta.NodeIDCounterKey
	cur, modRev, err := readCounter(ctx, b, log)
	if err != nil {
		return 0, err
	}
	for {
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("session: allocate node ID: %w", err)
		}
		next := cur + 1
		used, err := idInUse(ctx, b, next)
		if err != nil {
			return 0, err
		}
		resp, err := b.Txn(ctx, kv.Txn{
			If:   []kv.Cmp{kv.CmpModRevision(key, kv.Equal, modRev)},
			Then: []kv.Op{kv.OpPut(key, []byte(strconv.FormatInt(next, 10)))},
			Else: []kv.Op{kv.OpGet(key)},
		})
		if err != nil {
			return 0, fmt.Errorf("session: increment node ID counter: %w", err)
		}
		if resp.Succeeded {
			if !used {
				return next, nil
			}
			log.Warn("node ID skipped: its session key or channel prefix is not empty", zap.Int64("id", next))
			cur, modRev = next, resp.Revision
			continue
		}
		// Lost the race (or the counter was changed by hand): read it again,
		// repairing it if it is gone or garbage.
		got := resp.Responses[0].KV
		if got == nil {
			if cur, modRev, err = readCounter(ctx, b, log); err != nil {
				return 0, err
			}
			continue
		}
		n, perr := parseCounter(*got)
		if perr != nil {
			if cur, modRev, err = readCounter(ctx, b, log); err != nil {
				return 0, err
			}
			continue
		}
		cur, modRev = n, got.ModRevision
	}
}

// readCounter returns the counter and its mod revision, repairing a missing
// or corrupt counter from the highest ID in the root first.
func readCounter(ctx context.Context, b kv.KV, log *zap.Logger) (int64, int64, error) {
	key := meta.NodeIDCounterKey
	for {
		got, _, err := b.Get(ctx, key)
		var why string
		switch {
		case errors.Is(err, kv.ErrKeyNotFound):
			why = "missing"
		case err != nil:
			return 0, 0, fmt.Errorf("session: read node ID counter: %w", err)
		default:
			n, perr := parseCounter(got)
			if perr == nil {
				return n, got.ModRevision, nil
			}
			why = perr.Error()
		}
		high, err := HighestNodeID(ctx, b)
		if err != nil {
			return 0, 0, err
		}
		if why == "missing" && high == 0 {
			return 0, 0, nil // a fresh root: the first CAS creates it
		}
		log.Warn("repairing the node ID counter from the highest node ID in the root",
			zap.String("key", key), zap.String("was", why), zap.Int64("highest_id", high))
		resp, err := b.Txn(ctx, kv.Txn{
			If:   []kv.Cmp{kv.CmpModRevision(key, kv.Equal, got.ModRevision)},
			Then: []kv.Op{kv.OpPut(key, []byte(strconv.FormatInt(high, 10)))},
		})
		if err != nil {
			return 0, 0, fmt.Errorf("session: repair node ID counter: %w", err)
		}
		if resp.Succeeded {
			return high, resp.Revision, nil
		}
		// Someone else wrote it meanwhile: read again.
	}
}

// HighestNodeID returns the highest node ID that appears in the root: in a
// session key (session/node/<id>), in the counter, or in an assignment key
// (channel/<id>/<channel>); 0 when there is none. Keys that do not parse are
// ignored (so is the counter itself). It lists every assignment key, so it is meant for repairs, not
// for every allocation.
func HighestNodeID(ctx context.Context, b kv.KV) (int64, error) {
	var high int64
	for _, prefix := range []string{meta.NodeSessionPrefix, meta.ChannelPrefix} {
		kvs, _, err := b.List(ctx, prefix)
		if err != nil {
			return 0, fmt.Errorf("session: list %s: %w", prefix, err)
		}
		for _, e := range kvs {
			var id int64
			if prefix == meta.NodeSessionPrefix {
				id, err = meta.ParseNodeSessionKey(e.Key)
			} else {
				id, _, err = meta.ParseChannelKey(e.Key)
			}
			if err == nil && id > high {
				high = id
			}
		}
	}
	return high, nil
}

// idInUse reports whether node ID id has a session key or any key under its
// channel prefix.
func idInUse(ctx context.Context, b kv.KV, id int64) (bool, error) {
	_, _, err := b.Get(ctx, meta.NodeSessionKey(id))
	switch {
	case err == nil:
		return true, nil
	case !errors.Is(err, kv.ErrKeyNotFound):
		return false, fmt.Errorf("session: check node ID %d: %w", id, err)
	}
	kvs, _, err := b.List(ctx, meta.NodePrefix(id))
	if err != nil {
		return false, fmt.Errorf("session: check node ID %d: %w", id, err)
	}
	return len(kvs) > 0, nil
}

func parseCounter(v kv.KeyValue) (int64, error) {
	n, err := strconv.ParseInt(string(v.Value), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%w: %s: %q is not a node ID counter", meta.ErrCorruptValue, v.Key, v.Value)
	}
	return n, nil
}

// Node is a registered node: a fresh ID and its session key
// (meta.NodeSessionKey) on its Session's lease.
type Node struct {
	id        int64
	createRev int64
	b         kv.KV
	s         *Session
}

// RegisterNode allocates a new node ID (so the node's channel prefix is
// empty) and creates its session key on s.Lease() with info's Addr, Version
// and StartTime (the clock's now when zero), State serving and TTL s.TTL().
// info.ID, State and TTL are overwritten. It fails with an error wrapping
// ErrSessionDone when s has ended or its lease is gone.
//
// From then on the node watches its own session key: when the key is
// deleted, replaced (another create revision or lease) or marked evicted
// (meta.NodeEvicted, written by the coordinator under its leader guard), s
// is fenced at once with ErrEvicted, as if its lease had been lost: the
// lease may be revoked right after, and the coordinator moves the node's
// channels one TTL later.
func RegisterNode(ctx context.Context, b kv.Backend, s *Session, info meta.NodeSession) (*Node, error) {
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSessionDone, err)
	}
	id, err := allocateNodeID(ctx, b, s.log)
	if err != nil {
		return nil, err
	}
	info.ID = id
	info.State = meta.NodeServing
	info.TTL = s.TTL()
	if info.StartTime.IsZero() {
		info.StartTime = s.clock.Now()
	}
	val, err := meta.EncodeNodeSession(info)
	if err != nil {
		return nil, err
	}
	key := meta.NodeSessionKey(id)
	resp, err := b.Txn(ctx, kv.Txn{
		If:   []kv.Cmp{kv.CmpMissing(key)},
		Then: []kv.Op{kv.OpPutLease(key, val, s.Lease())},
	})
	switch {
	case errors.Is(err, kv.ErrLeaseNotFound):
		return nil, fmt.Errorf("%w: register node %d: %w", ErrSessionDone, id, err)
	case err != nil:
		return nil, fmt.Errorf("session: register node %d: %w", id, err)
	case !resp.Succeeded:
		// Only a foreign writer can have created a key for a fresh ID.
		return nil, fmt.Errorf("session: register node %d: %s already exists", id, key)
	}
	s.log.Debug("node session key created", zap.Int64("node", id), zap.Int64("create_revision", resp.Revision))
	n := &Node{id: id, createRev: resp.Revision, b: b, s: s}
	go n.monitor(b, resp.Revision+1)
	return n, nil
}

// ID returns the node's ID.
func (n *Node) ID() int64 { return n.id }

// CreateRevision returns the create revision of the node's session key: the
// incarnation that assignments under its prefix belong to. An assignment
// key created before it (a smaller create revision) was made for an earlier
// holder of the ID and is not this node's to run.
func (n *Node) CreateRevision() int64 { return n.createRev }

// monitor follows the node's session key from rev until the session ends,
// and fences the session when the key is deleted, replaced or marked
// evicted.
func (n *Node) monitor(b kv.Backend, rev int64) {
	s := n.s
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.Done():
		case <-ctx.Done():
		}
		cancel()
	}()
	why := followKey(ctx, b, s.clock, s.log, meta.NodeSessionKey(n.id), rev, func(_ context.Context, cur *kv.KeyValue, rev int64) string {
		if cur == nil {
			return deletedAt("session key", rev)
		}
		return n.foreign(*cur)
	})
	if why != "" {
		s.Fence(fmt.Errorf("%w: node %d: %s", ErrEvicted, n.id, why))
	}
}

// foreign says why cur is no longer this node's live session key ("" when
// it still is).
func (n *Node) foreign(cur kv.KeyValue) string {
	switch {
	case cur.CreateRevision != n.createRev:
		return fmt.Sprintf("session key replaced (create revision %d, ours %d)", cur.CreateRevision, n.createRev)
	case cur.Lease != n.s.Lease():
		return fmt.Sprintf("session key moved to lease %d (ours %d)", cur.Lease, n.s.Lease())
	}
	info, err := meta.DecodeNodeSession(cur.Key, cur.Value)
	if err == nil && info.State == meta.NodeEvicted {
		return fmt.Sprintf("evicted by the coordinator with token %d at revision %d: %s", info.EvictedBy, cur.ModRevision, info.EvictReason)
	}
	return ""
}

// Session returns the session the node is registered on.
func (n *Node) Session() *Session { return n.s }

// SetStopping marks the node stopping (a graceful drain: the coordinator
// moves its channels away and places none on it), keeping its lease. It is
// idempotent. ErrNodeNotFound when the session key is gone.
func (n *Node) SetStopping(ctx context.Context) error {
	return setStopping(ctx, n.b, n.id, n.s.Lease(), meta.StopShutdown)
}

// Drain marks node nodeID stopping, from any process: a compare-and-swap
// rewrite of its session value that keeps its lease, so the key still
// vanishes with the node. It is idempotent. ErrNodeNotFound when the node
// has no session key.
func Drain(ctx context.Context, b kv.KV, nodeID int64) error {
	if err := meta.ValidateNodeID(nodeID); err != nil {
		return err
	}
	return setStopping(ctx, b, nodeID, kv.NoLease, meta.StopDrain)
}

// setStopping rewrites the session value with State stopping and reason
// (meta.StopShutdown wins over meta.StopDrain: a node that shuts down must
// not be undrained), on the lease the key has (and only if it is
// wantLease, when that is set).
func setStopping(ctx context.Context, b kv.KV, id int64, wantLease kv.LeaseID, reason string) error {
	key := meta.NodeSessionKey(id)
	for {
		cur, _, err := b.Get(ctx, key)
		if errors.Is(err, kv.ErrKeyNotFound) {
			return fmt.Errorf("%w: node %d", ErrNodeNotFound, id)
		}
		if err != nil {
			return fmt.Errorf("session: drain node %d: %w", id, err)
		}
		if wantLease != kv.NoLease && cur.Lease != wantLease {
			return fmt.Errorf("%w: node %d is on lease %d, not %d", ErrNodeNotFound, id, cur.Lease, wantLease)
		}
		info, err := meta.DecodeNodeSession(key, cur.Value)
		if err != nil {
			return err
		}
		if info.State == meta.NodeStopping && (info.StopReason == reason || reason == meta.StopDrain) {
			return nil
		}
		if info.State == meta.NodeEvicted {
			return fmt.Errorf("%w: node %d", ErrNodeEvicted, id)
		}
		info.State, info.StopReason = meta.NodeStopping, reason
		val, err := meta.EncodeNodeSession(info)
		if err != nil {
			return err
		}
		resp, err := b.Txn(ctx, kv.Txn{
			If:   []kv.Cmp{kv.CmpModRevision(key, kv.Equal, cur.ModRevision)},
			Then: []kv.Op{kv.OpPutLease(key, val, cur.Lease)},
		})
		if errors.Is(err, kv.ErrLeaseNotFound) {
			return fmt.Errorf("%w: node %d: %w", ErrNodeNotFound, id, err)
		}
		if err != nil {
			return fmt.Errorf("session: drain node %d: %w", id, err)
		}
		if resp.Succeeded {
			return nil
		}
		// The value changed under us (another drain, or the key went and
		// came back): read it again.
	}
}

// Member is one live node as its session key says.
type Member struct {
	meta.NodeSession
	// Lease is the node's session lease (what an eviction revokes).
	Lease kv.LeaseID
	// ModRevision is the session key's mod revision.
	ModRevision int64
}

// ListNodes returns every node with a session key, sorted by key, and the
// revision of the read. Keys that do not parse and values that do not
// decode are skipped, since one bad key must not hide the live nodes; a
// caller that must see them lists meta.NodeSessionPrefix itself.
func ListNodes(ctx context.Context, b kv.KV) ([]Member, int64, error) {
	kvs, rev, err := b.List(ctx, meta.NodeSessionPrefix)
	if err != nil {
		return nil, 0, fmt.Errorf("session: list nodes: %w", err)
	}
	out := make([]Member, 0, len(kvs))
	for _, e := range kvs {
		id, err := meta.ParseNodeSessionKey(e.Key)
		if err != nil {
			continue
		}
		info, err := meta.DecodeNodeSession(e.Key, e.Value)
		if err != nil || info.ID != id {
			continue
		}
		out = append(out, Member{NodeSession: info, Lease: e.Lease, ModRevision: e.ModRevision})
	}
	return out, rev, nil
}
