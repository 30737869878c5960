package kv

import "fmt"

// LeaseID names a lease. NoLease (0) means "no lease".
type LeaseID int64

// NoLease is the zero LeaseID: a put without a lease.
const NoLease LeaseID = 0

// KeyValue is one key as stored. Key is relative to the backend's root.
type KeyValue struct {
	Key            string
	Value          []byte
	CreateRevision int64
	ModRevision    int64
	Version        int64
	Lease          LeaseID
}

// OpType is the kind of an Op.
type OpType int

// Op types.
const (
	OpTypePut OpType = iota + 1
	OpTypeDelete
	OpTypeGet
)

func (t OpType) String() string {
	switch t {
	case OpTypePut:
		return "put"
	case OpTypeDelete:
		return "delete"
	case OpTypeGet:
		return "get"
	}
	return fmt.Sprintf("OpType(%d)", int(t))
}

// Op is one operation in a Txn branch. Build it with OpPut, OpDelete, OpGet.
type Op struct {
	Type  OpType
	Key   string
	Value []byte
	Lease LeaseID
}

// OpPut puts key=value, with no lease.
func OpPut(key string, value []byte) Op { return Op{Type: OpTypePut, Key: key, Value: value} }

// OpPutLease puts key=value attached to lease: the key is deleted when the
// lease expires or is revoked.
func OpPutLease(key string, value []byte, lease LeaseID) Op {
	return Op{Type: OpTypePut, Key: key, Value: value, Lease: lease}
}

// OpDelete deletes key; deleting a missing key is a no-op (Deleted == 0).
func OpDelete(key string) Op { return Op{Type: OpTypeDelete, Key: key} }

// OpGet reads key inside the Txn, at the Txn's revision.
func OpGet(key string) Op { return Op{Type: OpTypeGet, Key: key} }

// IsWrite reports whether the op writes.
func (o Op) IsWrite() bool { return o.Type == OpTypePut || o.Type == OpTypeDelete }

// CmpTarget is what a Cmp compares.
type CmpTarget int

// Compare targets.
const (
	TargetValue CmpTarget = iota + 1
	TargetVersion
	TargetCreateRevision
	TargetModRevision
)

func (t CmpTarget) String() string {
	switch t {
	case TargetValue:
		return "value"
	case TargetVersion:
		return "version"
	case TargetCreateRevision:
		return "create_revision"
	case TargetModRevision:
		return "mod_revision"
	}
	return fmt.Sprintf("CmpTarget(%d)", int(t))
}

// CmpResult is the relation a Cmp asserts.
type CmpResult int

// Compare relations.
const (
	Equal CmpResult = iota + 1
	NotEqual
	Less
	Greater
)

func (r CmpResult) String() string {
	switch r {
	case Equal:
		return "="
	case NotEqual:
		return "!="
	case Less:
		return "<"
	case Greater:
		return ">"
	}
	return fmt.Sprintf("CmpResult(%d)", int(r))
}

// Cmp is one compare in a Txn's If list. Build it with the Cmp* helpers.
type Cmp struct {
	Key    string
	Target CmpTarget
	Result CmpResult
	// Value is compared for TargetValue (byte-wise, as etcd does).
	Value []byte
	// Num is compared for the version and revision targets.
	Num int64
}

func (c Cmp) String() string {
	if c.Target == TargetValue {
		return fmt.Sprintf("%s(%q) %s %q", c.Target, c.Key, c.Result, c.Value)
	}
	return fmt.Sprintf("%s(%q) %s %d", c.Target, c.Key, c.Result, c.Num)
}

// CmpValue compares key's value. On a missing key it is always false.
func CmpValue(key string, r CmpResult, value []byte) Cmp {
	return Cmp{Key: key, Target: TargetValue, Result: r, Value: value}
}

// CmpVersion compares key's version (0 when missing).
func CmpVersion(key string, r CmpResult, v int64) Cmp {
	return Cmp{Key: key, Target: TargetVersion, Result: r, Num: v}
}

// CmpCreateRevision compares key's create revision (0 when missing).
func CmpCreateRevision(key string, r CmpResult, rev int64) Cmp {
	return Cmp{Key: key, Target: TargetCreateRevision, Result: r, Num: rev}
}

// CmpModRevision compares key's mod revision (0 when missing).
func CmpModRevision(key string, r CmpResult, rev int64) Cmp {
	return Cmp{Key: key, Target: TargetModRevision, Result: r, Num: rev}
}

// CmpMissing holds when key does not exist: a create-only guard.
func CmpMissing(key string) Cmp { return CmpCreateRevision(key, Equal, 0) }

// CmpExists holds when key exists.
func CmpExists(key string) Cmp { return CmpCreateRevision(key, Greater, 0) }

// Txn is an atomic If/Then/Else request.
type Txn struct {
	If   []Cmp
	Then []Op
	Else []Op
}

// OpResponse is the result of one Op, in branch order.
type OpResponse struct {
	// KV is set for a Get that found its key; nil otherwise.
	KV *KeyValue
	// Deleted is 1 for a Delete that removed a key, 0 otherwise.
	Deleted int64
}

// TxnResponse is the result of a Txn.
type TxnResponse struct {
	// Succeeded: all compares held and Then ran; false: Else ran.
	Succeeded bool
	// Revision is the store revision after the Txn: the revision of its
	// writes if it wrote, otherwise the revision it read at.
	Revision int64
	// Responses holds one entry per op of the branch that ran.
	Responses []OpResponse
}

// EventType is PUT or DELETE.
type EventType int

// Event types.
const (
	EventPut EventType = iota + 1
	EventDelete
)

func (t EventType) String() string {
	switch t {
	case EventPut:
		return "PUT"
	case EventDelete:
		return "DELETE"
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

// Event is one change to one key. For a DELETE, KV holds the key and
// ModRevision (the revision of the delete); the other fields are zero.
type Event struct {
	Type EventType
	KV   KeyValue
}

// Revision is the revision at which the event happened.
func (e Event) Revision() int64 { return e.KV.ModRevision }

// WatchResponse is one batch of events, or the watch's final error.
type WatchResponse struct {
	// Events are in revision order; all events of one Txn are in the same
	// response.
	Events []Event
	// Err, when set, is terminal: the channel is closed after this response.
	Err error
}

// WatchChan delivers WatchResponses until the watch ends, then is closed.
type WatchChan <-chan WatchResponse
