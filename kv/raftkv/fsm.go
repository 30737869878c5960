package raftkv

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/memkv"
)

// opCode names what a log entry does to the store. Values are on disk:
// append only.
type opCode uint8

const (
	opTxn     opCode = iota + 1 // Txn: a write txn
	opGrant                     // TTL: grant a lease; its ID is the entry's index
	opRevoke                    // Lease: revoke a lease for a client
	opExpire                    // Lease: the leader's decision that a lease expired
	opCompact                   // Rev: compact the history
	opBarrier                   // nothing: a new leader's first entry, see Node.lead
	opMax
)

func (o opCode) String() string {
	switch o {
	case opTxn:
		return "txn"
	case opGrant:
		return "grant"
	case opRevoke:
		return "revoke"
	case opExpire:
		return "expire"
	case opCompact:
		return "compact"
	case opBarrier:
		return "barrier"
	}
	return fmt.Sprintf("opCode(%d)", uint8(o))
}

// command is one log entry, JSON-encoded. JSON of these fixed structs is
// deterministic, readable in a log dump, and decodes strictly.
type command struct {
	Op    opCode        `json:"op"`
	Txn   *kv.Txn       `json:"txn,omitempty"`
	Lease kv.LeaseID    `json:"lease,omitempty"`
	TTL   time.Duration `json:"ttl,omitempty"`
	Rev   int64         `json:"rev,omitempty"`
}

func (c command) encode() []byte {
	b, err := json.Marshal(c)
	if err != nil {
		// Only plain data types are marshalled: this cannot happen.
		panic(fmt.Sprintf("raftkv: encode %v command: %v", c.Op, err))
	}
	return b
}

func decodeCommand(b []byte) (command, error) {
	var c command
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return command{}, err
	}
	if dec.More() {
		return command{}, errors.New("trailing data")
	}
	if c.Op == 0 || c.Op >= opMax {
		return command{}, fmt.Errorf("unknown op %d", c.Op)
	}
	if c.Op == opTxn && c.Txn == nil {
		return command{}, errors.New("txn command without a txn")
	}
	return c, nil
}

// result is what applying a command returned: raft hands it to the
// proposer through ApplyFuture.Response. Err is the store's verdict
// (kv.ErrLeaseNotFound, a *kv.CompactedError, ...), the same on every
// replica.
type result struct {
	Txn   kv.TxnResponse
	Rev   int64
	Lease kv.LeaseID
	Err   error
}

// fsm applies the log to a memkv.Store. It is a type of its own so that
// raft's Apply/Snapshot/Restore stay out of Node's API.
type fsm struct {
	store *memkv.Store

	mu      sync.Mutex
	applied uint64        // index of the last entry applied (commands and configurations)
	advance chan struct{} // closed and replaced when applied changes

	restores atomic.Int64 // snapshots restored, for tests
}

func newFSM() *fsm {
	return &fsm{store: memkv.NewStore(), advance: make(chan struct{})}
}

var _ raft.ConfigurationStore = (*fsm)(nil)

// Apply applies one committed command. It panics on an entry it cannot
// decode: a corrupt log must stop the replica, not fork its state.
func (f *fsm) Apply(l *raft.Log) any {
	c, err := decodeCommand(l.Data)
	if err != nil {
		panic(fmt.Sprintf("raftkv: corrupt log entry %d (term %d): %v", l.Index, l.Term, err))
	}
	res := f.apply(l.Index, c)
	f.setApplied(l.Index)
	return res
}

func (f *fsm) apply(index uint64, c command) *result {
	s := f.store
	switch c.Op {
	case opTxn:
		// The proposer checked the size against its limit; replicas must
		// not disagree because their own limits differ.
		r, err := s.Txn(*c.Txn, math.MaxInt)
		return &result{Txn: r, Rev: r.Revision, Err: err}
	case opGrant:
		// The entry's index is unique in the cluster forever and the same
		// on every replica: a lease ID no two leaders can both hand out.
		id := kv.LeaseID(index)
		return &result{Lease: id, Err: s.Grant(id, c.TTL)}
	case opRevoke, opExpire:
		rev, err := s.Revoke(c.Lease)
		return &result{Lease: c.Lease, Rev: rev, Err: err}
	case opCompact:
		return &result{Rev: c.Rev, Err: s.Compact(c.Rev)}
	case opBarrier:
		return &result{Rev: s.Rev()}
	}
	panic(fmt.Sprintf("raftkv: unknown op %v at index %d", c.Op, index))
}

// StoreConfiguration records that a membership entry was applied: reads
// wait for the applied index, and the entry at a read index may be one.
func (f *fsm) StoreConfiguration(index uint64, _ raft.Configuration) { f.setApplied(index) }

func (f *fsm) setApplied(index uint64) {
	f.mu.Lock()
	f.applied = index
	close(f.advance)
	f.advance = make(chan struct{})
	f.mu.Unlock()
}

func (f *fsm) appliedIndex() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applied
}

// waitApplied returns once the entry at index (a command or configuration)
// has been applied, or with an error when ctx or stop ends first.
func (f *fsm) waitApplied(ctx context.Context, stop <-chan struct{}, index uint64) error {
	for {
		f.mu.Lock()
		applied, ch := f.applied, f.advance
		f.mu.Unlock()
		if applied >= index {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("raftkv: waiting to apply index %d (at %d): %w", index, applied, ctx.Err())
		case <-stop:
			return kv.ErrClosed
		}
	}
}

// Snapshot layout: magic, the applied index (big endian), then the
// memkv.Store snapshot.
const snapMagic = "raftkv1\n"

// Snapshot encodes the state here, on raft's FSM goroutine, so that it is
// exactly the state at the snapshot's index: Persist runs concurrently with
// Apply and would see later writes. The cost is one encoding in memory.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	var buf bytes.Buffer
	buf.WriteString(snapMagic)
	var idx [8]byte
	binary.BigEndian.PutUint64(idx[:], f.appliedIndex())
	buf.Write(idx[:])
	if err := f.store.Snapshot(&buf); err != nil {
		return nil, fmt.Errorf("raftkv: snapshot: %w", err)
	}
	return fsmSnapshot(buf.Bytes()), nil
}

// Restore replaces the state with a snapshot. Watchers that cannot go on
// without a gap end with a *kv.CompactedError (see memkv.Store.Restore).
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	hdr := make([]byte, len(snapMagic)+8)
	if _, err := io.ReadFull(rc, hdr); err != nil {
		return fmt.Errorf("raftkv: restore: read header: %w", err)
	}
	if string(hdr[:len(snapMagic)]) != snapMagic {
		return fmt.Errorf("raftkv: restore: not a raftkv snapshot")
	}
	applied := binary.BigEndian.Uint64(hdr[len(snapMagic):])
	if err := f.store.Restore(rc); err != nil {
		return fmt.Errorf("raftkv: restore: %w", err)
	}
	f.setApplied(applied)
	f.restores.Add(1)
	return nil
}

// fsmSnapshot is an encoded snapshot waiting to be written.
type fsmSnapshot []byte

func (s fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("raftkv: persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s fsmSnapshot) Release() {}
