package meta

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"
)

// SchemaVersion is the version written in every value ("v").
const SchemaVersion = 1

// ChannelSpec is a registered channel: registry/<channel>. It is desired
// state, written once (create-only) and deleted on deregistration.
type ChannelSpec struct {
	Name         string `json:"name"`
	CollectionID int64  `json:"collection_id"`
	// Vchannel is opaque to chanwatch: the VchannelInfo a node needs to
	// restore the channel (seek position, segment IDs), as JSON.
	Vchannel json.RawMessage `json:"vchannel,omitempty"`
	// Weight is the channel's load relative to others (0: DefaultWeight);
	// see placement.go for the rules of Weight, Require and Spread.
	Weight float64 `json:"weight,omitempty"`
	// Require lists labels a node must carry to take the channel: a hard
	// constraint (group=ingest).
	Require Labels `json:"require,omitzero"`
	// Spread names a node label (zone) across whose values the channels of
	// the collection should spread: a preference, not a constraint.
	Spread string `json:"spread,omitempty"`
}

// Validate checks the spec's name, weight and constraints.
func (s ChannelSpec) Validate() error {
	if err := ValidateChannel(s.Name); err != nil {
		return err
	}
	return s.validatePlacement()
}

// ChannelInfo is the MEP's assignment value: channel/<nodeID>/<channel> or
// channel/remaining/<channel>.
type ChannelInfo struct {
	Name         string `json:"name"`
	CollectionID int64  `json:"collection_id"`
	State        State  `json:"state"`
	// StartTime is when the current attempt (watch or release) began.
	StartTime time.Time `json:"start_time"`
	// AssignRevision is the fencing token: the revision at which this
	// assignment was written as ToWatch. The coordinator writes 0; the node
	// fills it from the ToWatch key's mod revision when it reports, and it
	// is what the handler gets. Tokens of one channel only grow.
	AssignRevision int64 `json:"assign_rev,omitempty"`
	// Attempts counts placements of this channel that failed or timed out.
	Attempts int `json:"attempts,omitempty"`
	// LastError is the last failure reported or detected, for operators. It
	// stays through the release, the backoff and the next attempts; only a
	// successful Watched clears it.
	LastError string `json:"last_error,omitempty"`
	// Progress is bumped by the node while a long Watch runs; any change
	// re-arms the coordinator's timeout.
	Progress int64 `json:"progress,omitempty"`
	// FailedNode is the node whose attempt last failed or timed out, so the
	// next placement avoids it while another node exists.
	FailedNode int64 `json:"failed_node,omitempty"`
	// Vchannel is copied from the ChannelSpec.
	Vchannel json.RawMessage `json:"vchannel,omitempty"`
}

// Validate checks name and state.
func (c ChannelInfo) Validate() error {
	if err := ValidateChannel(c.Name); err != nil {
		return err
	}
	if !c.State.Valid() {
		return fmt.Errorf("%w: channel %q has state %v", ErrCorruptValue, c.Name, c.State)
	}
	return nil
}

// NodeState is a node session's state.
type NodeState string

// Node states.
const (
	NodeServing  NodeState = "serving"
	NodeStopping NodeState = "stopping"
	// NodeEvicted: the coordinator evicted the node (it did not release a
	// channel in time, or failed to). Written by the leader under its
	// guard, on the node's own lease; the node fences itself as soon as it
	// sees it, and the coordinator moves its channels one node TTL after
	// the node's lease is certainly gone.
	NodeEvicted NodeState = "evicted"
)

// NodeSession is session/node/<id>, attached to the node's lease.
type NodeSession struct {
	ID        int64     `json:"id"`
	Addr      string    `json:"addr,omitempty"`
	Version   string    `json:"version,omitempty"`
	StartTime time.Time `json:"start_time"`
	State     NodeState `json:"state"`
	// TTL is the session lease's TTL: how long after losing contact the
	// node has certainly stopped every channel (its self-fence deadline).
	TTL time.Duration `json:"ttl"`
	// EvictedBy is the fencing token of the coordinator that evicted the
	// node (State NodeEvicted), and EvictReason why.
	EvictedBy   int64  `json:"evicted_by,omitempty"`
	EvictReason string `json:"evict_reason,omitempty"`
	// StopReason says who made the node stopping (State NodeStopping):
	// StopShutdown, the node's own process shutting down (it exits once
	// drained), or StopDrain, an operator's drain (it stays up, empty, and
	// may be undrained). Empty in values written before it existed: read
	// as StopDrain.
	StopReason string `json:"stop_reason,omitempty"`
	// Capacity is how much load the node takes relative to others (0:
	// DefaultCapacity), and Labels what it offers to channel constraints
	// (zone=a, group=ingest); see placement.go.
	Capacity float64 `json:"capacity,omitempty"`
	Labels   Labels  `json:"labels,omitzero"`
	// Prepare says the node's handler can prepare a channel before it
	// takes it over (nodewatch.Preparer): the coordinator may then send it
	// prepare/<id>/<channel> requests on planned moves. Omitted when false,
	// so the values of other nodes are unchanged; a reader that predates it
	// ignores it and simply never asks (no schema version bump: dropping it
	// loses an optimisation, never a constraint).
	Prepare bool `json:"prepare,omitempty"`
}

// Values of NodeSession.StopReason.
const (
	StopShutdown = "shutdown"
	StopDrain    = "drain"
)

// CoordSession is session/coord, attached to the leader's lease.
type CoordSession struct {
	ID        string    `json:"id"`
	Addr      string    `json:"addr,omitempty"`
	StartTime time.Time `json:"start_time"`
}

// encode writes v as a JSON object with the schema version first.
func encode(v any) ([]byte, error) { return encodeV(v, SchemaVersion) }

// encodeV writes v as a JSON object with schema version ver first.
func encodeV(v any, ver int) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	if len(b) < 2 || b[0] != '{' {
		return nil, fmt.Errorf("meta: %T does not encode as an object", v)
	}
	out := make([]byte, 0, len(b)+8)
	out = append(out, `{"v":`...)
	out = strconv.AppendInt(out, int64(ver), 10)
	if len(b) > 2 {
		out = append(out, ',')
	}
	return append(out, b[1:]...), nil
}

// decodeOnce is decodeUpTo's one-pass fast path for the values a
// coordinator reads by the hundred thousand: it decodes b into wire, a
// struct holding the version field *ver and the value embedded, and
// reports whether that worked and the version is between SchemaVersion and
// maxVer. When it reports false the caller runs decodeUpTo, whose answer
// (and error) counts; the two accept the same values.
func decodeOnce(b []byte, wire any, ver **int, maxVer int) bool {
	return len(b) > 0 && json.Unmarshal(b, wire) == nil && *ver != nil && **ver >= SchemaVersion && **ver <= maxVer
}

// decode checks the schema version and decodes b into v.
func decode(key string, b []byte, v any) error { return decodeUpTo(key, b, v, SchemaVersion) }

// decodeUpTo decodes b into v if its schema version is between
// SchemaVersion and maxVer.
func decodeUpTo(key string, b []byte, v any, maxVer int) error {
	if len(b) == 0 {
		return fmt.Errorf("%w: %s: empty value", ErrCorruptValue, key)
	}
	var env struct {
		V *int `json:"v"`
	}
	if err := json.Unmarshal(b, &env); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrCorruptValue, key, err)
	}
	if env.V == nil {
		return fmt.Errorf("%w: %s: no schema version", ErrCorruptValue, key)
	}
	if *env.V < SchemaVersion || *env.V > maxVer {
		want := strconv.Itoa(SchemaVersion)
		if maxVer > SchemaVersion {
			want += ".." + strconv.Itoa(maxVer)
		}
		return fmt.Errorf("%w: %s: schema version %d, want %s", ErrCorruptValue, key, *env.V, want)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrCorruptValue, key, err)
	}
	return nil
}

// EncodeChannelSpec encodes a spec after validating it.
func EncodeChannelSpec(s ChannelSpec) ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return encodeV(&s, s.schemaVersion())
}

// DecodeChannelSpec decodes the value of key (used in errors).
func DecodeChannelSpec(key string, b []byte) (ChannelSpec, error) {
	var w struct {
		V *int `json:"v"`
		ChannelSpec
	}
	s := &w.ChannelSpec
	if ver, ok := fastChannelSpec(b, s); !ok || ver < SchemaVersion || ver > PlacementSchemaVersion {
		*s = ChannelSpec{}
		if !decodeOnce(b, &w, &w.V, PlacementSchemaVersion) {
			*s = ChannelSpec{}
			if err := decodeUpTo(key, b, s, PlacementSchemaVersion); err != nil {
				return ChannelSpec{}, err
			}
		}
	}
	if err := s.Validate(); err != nil {
		return ChannelSpec{}, fmt.Errorf("%w: %s: %w", ErrCorruptValue, key, err)
	}
	return *s, nil
}

// EncodeChannelInfo encodes an assignment after validating it.
func EncodeChannelInfo(c ChannelInfo) ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return encode(&c)
}

// DecodeChannelInfo decodes the value of key (used in errors). A value
// whose name disagrees with the key's channel segment is corrupt.
func DecodeChannelInfo(key string, b []byte) (ChannelInfo, error) {
	var w struct {
		V *int `json:"v"`
		ChannelInfo
	}
	c := &w.ChannelInfo
	if ver, ok := fastChannelInfo(b, c); !ok || ver != SchemaVersion {
		*c = ChannelInfo{}
		if !decodeOnce(b, &w, &w.V, SchemaVersion) {
			*c = ChannelInfo{}
			if err := decode(key, b, c); err != nil {
				return ChannelInfo{}, err
			}
		}
	}
	if err := c.Validate(); err != nil {
		return ChannelInfo{}, fmt.Errorf("%w: %s: %w", ErrCorruptValue, key, err)
	}
	if _, ch, err := ParseChannelKey(key); err == nil && ch != c.Name {
		return ChannelInfo{}, fmt.Errorf("%w: %s: value names channel %q", ErrCorruptValue, key, c.Name)
	}
	return *c, nil
}

// EncodeNodeSession encodes a node session.
func EncodeNodeSession(s NodeSession) ([]byte, error) {
	if err := ValidateNodeID(s.ID); err != nil {
		return nil, err
	}
	if err := s.validatePlacement(); err != nil {
		return nil, err
	}
	return encodeV(&s, s.schemaVersion())
}

// DecodeNodeSession decodes the value of key (used in errors).
func DecodeNodeSession(key string, b []byte) (NodeSession, error) {
	var s NodeSession
	if err := decodeUpTo(key, b, &s, PlacementSchemaVersion); err != nil {
		return NodeSession{}, err
	}
	if err := ValidateNodeID(s.ID); err != nil {
		return NodeSession{}, fmt.Errorf("%w: %s: %w", ErrCorruptValue, key, err)
	}
	if err := s.validatePlacement(); err != nil {
		return NodeSession{}, fmt.Errorf("%w: %s: %w", ErrCorruptValue, key, err)
	}
	if s.State != NodeServing && s.State != NodeStopping && s.State != NodeEvicted {
		return NodeSession{}, fmt.Errorf("%w: %s: unknown node state %q", ErrCorruptValue, key, s.State)
	}
	return s, nil
}

// EncodeCoordSession encodes the leader key's value.
func EncodeCoordSession(s CoordSession) ([]byte, error) { return encode(&s) }

// DecodeCoordSession decodes the leader key's value.
func DecodeCoordSession(key string, b []byte) (CoordSession, error) {
	var s CoordSession
	err := decode(key, b, &s)
	return s, err
}

// EncodePrepareInfo encodes the value of a prepare/<id>/<channel> key: a
// ChannelInfo (schema version 1, the same fields as an assignment) whose
// State is ToPrepare, Prepared or PrepareFailure. AssignRevision is always
// 0: a preparation has no fencing token, as it owns nothing. LastError is
// bounded by TruncateError.
func EncodePrepareInfo(c ChannelInfo) ([]byte, error) {
	if err := c.validatePrepare(); err != nil {
		return nil, err
	}
	c.LastError = TruncateError(c.LastError)
	return encode(&c)
}

// DecodePrepareInfo decodes the value of prepare key key (used in errors).
// A value whose name disagrees with the key's channel segment is corrupt.
func DecodePrepareInfo(key string, b []byte) (ChannelInfo, error) {
	var c ChannelInfo
	if err := decode(key, b, &c); err != nil {
		return ChannelInfo{}, err
	}
	if err := c.validatePrepare(); err != nil {
		return ChannelInfo{}, fmt.Errorf("%w: %s: %w", ErrCorruptValue, key, err)
	}
	if _, ch, err := ParsePrepareKey(key); err == nil && ch != c.Name {
		return ChannelInfo{}, fmt.Errorf("%w: %s: value names channel %q", ErrCorruptValue, key, c.Name)
	}
	return c, nil
}

func (c ChannelInfo) validatePrepare() error {
	if err := ValidateChannel(c.Name); err != nil {
		return err
	}
	if !c.State.ValidPrepare() {
		return fmt.Errorf("%w: prepare of channel %q has state %v", ErrCorruptValue, c.Name, c.State)
	}
	if c.AssignRevision != 0 {
		return fmt.Errorf("%w: prepare of channel %q carries a fencing token %d", ErrCorruptValue, c.Name, c.AssignRevision)
	}
	return nil
}

// MaxErrorLen bounds ChannelInfo.LastError, in bytes before JSON encoding
// (which may escape a byte into up to 6): every writer passes its error
// text through TruncateError, so an assignment's size never depends on how
// long a handler's error was.
const MaxErrorLen = 4096

// TruncateError returns s when it is at most MaxErrorLen bytes, and
// otherwise its head, cut at a UTF-8 boundary, followed by the marker
// "…[truncated N bytes]" (N: the bytes left out), MaxErrorLen bytes at most
// in all.
func TruncateError(s string) string {
	if len(s) <= MaxErrorLen {
		return s
	}
	// The marker's width depends on N; reserve room for the widest.
	const reserve = len("…[truncated  bytes]") + 20
	cut := MaxErrorLen - reserve
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + fmt.Sprintf("…[truncated %d bytes]", len(s)-cut)
}

// Quarantine is control/quarantine/<nodeID>: the leader published that it
// keeps new channels and balance moves off the node (see channelmgr). It is
// a report of the leader's memory, written under its guard, never needed
// for safety; deleting it asks the leader to lift the quarantine.
type Quarantine struct {
	Node int64 `json:"node"`
	// Reason is the last failure that counted against the node.
	Reason string `json:"reason"`
	// Failures is how many failures counted since the node's last success,
	// and Quarantines how many times it was quarantined since then (the
	// exponent of its backoff).
	Failures    int       `json:"failures"`
	Quarantines int       `json:"quarantines"`
	Since       time.Time `json:"since"`
	// Until is when the node may take one channel again (a probe); it
	// takes load again after a probe succeeds.
	Until time.Time `json:"until"`
}

// EncodeQuarantine encodes a quarantine record.
func EncodeQuarantine(q Quarantine) ([]byte, error) {
	if err := ValidateNodeID(q.Node); err != nil {
		return nil, err
	}
	q.Reason = TruncateError(q.Reason)
	return encode(&q)
}

// DecodeQuarantine decodes the value of key (used in errors).
func DecodeQuarantine(key string, b []byte) (Quarantine, error) {
	var q Quarantine
	if err := decode(key, b, &q); err != nil {
		return Quarantine{}, err
	}
	if err := ValidateNodeID(q.Node); err != nil {
		return Quarantine{}, fmt.Errorf("%w: %s: %w", ErrCorruptValue, key, err)
	}
	return q, nil
}
