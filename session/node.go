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
// new ID's channel prefix is empty; an ambiguous write (kv.ErrUnknownOutcome)
// may burn an ID, never hand one out twice. A counter that does not parse
// fails with an error wrapping meta.ErrCorruptValue.
func AllocateNodeID(ctx context.Context, b kv.KV) (int64, error) {
	key := meta.NodeIDCounterKey
	var cur, modRev int64
	kvs, _, err := b.Get(ctx, key)
	switch {
	case errors.Is(err, kv.ErrKeyNotFound):
	case err != nil:
		return 0, fmt.Errorf("session: read node ID counter: %w", err)
	default:
		if cur, err = parseCounter(kvs); err != nil {
			return 0, err
		}
		modRev = kvs.ModRevision
	}
	for {
		next := cur + 1
		resp, err := b.Txn(ctx, kv.Txn{
			If:   []kv.Cmp{kv.CmpModRevision(key, kv.Equal, modRev)},
			Then: []kv.Op{kv.OpPut(key, []byte(strconv.FormatInt(next, 10)))},
			Else: []kv.Op{kv.OpGet(key)},
		})
		if err != nil {
			return 0, fmt.Errorf("session: increment node ID counter: %w", err)
		}
		if resp.Succeeded {
			return next, nil
		}
		// Lost the race: the Else branch read the counter for the retry.
		cur, modRev = 0, 0
		if got := resp.Responses[0].KV; got != nil {
			if cur, err = parseCounter(*got); err != nil {
				return 0, err
			}
			modRev = got.ModRevision
		}
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("session: allocate node ID: %w", err)
		}
	}
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
	id int64
	b  kv.KV
	s  *Session
}

// RegisterNode allocates a new node ID (so the node's channel prefix is
// empty) and creates its session key on s.Lease() with info's Addr, Version
// and StartTime (the clock's now when zero), State serving and TTL s.TTL().
// info.ID, State and TTL are overwritten. It fails with an error wrapping
// ErrSessionDone when s has ended or its lease is gone.
func RegisterNode(ctx context.Context, b kv.Backend, s *Session, info meta.NodeSession) (*Node, error) {
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSessionDone, err)
	}
	id, err := AllocateNodeID(ctx, b)
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
	s.log.Info("node registered", zap.Int64("node", id))
	return &Node{id: id, b: b, s: s}, nil
}

// ID returns the node's ID.
func (n *Node) ID() int64 { return n.id }

// Session returns the session the node is registered on.
func (n *Node) Session() *Session { return n.s }

// SetStopping marks the node stopping (a graceful drain: the coordinator
// moves its channels away and places none on it), keeping its lease. It is
// idempotent. ErrNodeNotFound when the session key is gone.
func (n *Node) SetStopping(ctx context.Context) error {
	return setStopping(ctx, n.b, n.id, n.s.Lease())
}

// Drain marks node nodeID stopping, from any process: a compare-and-swap
// rewrite of its session value that keeps its lease, so the key still
// vanishes with the node. It is idempotent. ErrNodeNotFound when the node
// has no session key.
func Drain(ctx context.Context, b kv.KV, nodeID int64) error {
	if err := meta.ValidateNodeID(nodeID); err != nil {
		return err
	}
	return setStopping(ctx, b, nodeID, kv.NoLease)
}

// setStopping rewrites the session value with State stopping, on the lease
// the key has (and only if it is wantLease, when that is set).
func setStopping(ctx context.Context, b kv.KV, id int64, wantLease kv.LeaseID) error {
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
		if info.State == meta.NodeStopping {
			return nil
		}
		info.State = meta.NodeStopping
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
