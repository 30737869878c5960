package meta

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Errors.
var (
	// ErrBadKey: a key under a meta prefix does not parse (a non-numeric node
	// segment, a missing channel name, a nested path).
	ErrBadKey = errors.New("meta: malformed key")
	// ErrCorruptValue: a value does not decode (bad JSON, unknown schema
	// version, unknown state, missing fields).
	ErrCorruptValue = errors.New("meta: corrupt value")
	// ErrInvalidChannel: a channel name that cannot be stored (empty, with
	// '/', control characters or spaces, or longer than MaxChannelNameLen).
	ErrInvalidChannel = errors.New("meta: invalid channel name")
	// ErrInvalidNodeID: a node ID <= 0.
	ErrInvalidNodeID = errors.New("meta: invalid node ID")
)

// MaxChannelNameLen bounds channel names (Milvus vchannel names are far shorter).
const MaxChannelNameLen = 512

// Key prefixes, relative to the backend root.
const (
	RegistryPrefix    = "registry/"
	SessionPrefix     = "session/"
	NodeSessionPrefix = "session/node/"
	NodeIDCounterKey  = "session/node-id"
	CoordinatorKey    = "session/coord"
	ChannelPrefix     = "channel/"
	RemainingPrefix   = "channel/remaining/"
	ControlPrefix     = "control/"
	BalancePausedKey  = "control/balance-paused"
	QuarantinePrefix  = "control/quarantine/"
	// PreparePrefix holds warm-handoff requests: prepare/<nodeID>/<channel>,
	// written by the coordinator (ToPrepare) and answered by the node
	// (Prepared, PrepareFailure). It is outside channel/ on purpose: a
	// prepare key never makes its node an owner.
	PreparePrefix = "prepare/"
)

// remainingSegment is the node segment of RemainingPrefix.
const remainingSegment = "remaining"

// ValidateChannel checks that name can be used as a key segment.
func ValidateChannel(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", ErrInvalidChannel)
	case len(name) > MaxChannelNameLen:
		return fmt.Errorf("%w: %d bytes, max %d", ErrInvalidChannel, len(name), MaxChannelNameLen)
	case !utf8.ValidString(name):
		return fmt.Errorf("%w: %q is not UTF-8", ErrInvalidChannel, name)
	case strings.Contains(name, "/"):
		return fmt.Errorf("%w: %q contains '/'", ErrInvalidChannel, name)
	case name == "." || name == "..":
		// etcd keys allow them, but paths and URLs built from the name do not.
		return fmt.Errorf("%w: %q is a path element, not a name", ErrInvalidChannel, name)
	}
	for _, r := range name {
		if unicode.IsControl(r) || unicode.IsSpace(r) {
			return fmt.Errorf("%w: %q contains space or control characters", ErrInvalidChannel, name)
		}
	}
	return nil
}

// ValidateNodeID checks id > 0.
func ValidateNodeID(id int64) error {
	if id <= 0 {
		return fmt.Errorf("%w: %d", ErrInvalidNodeID, id)
	}
	return nil
}

// RegistryKey is registry/<channel>.
func RegistryKey(channel string) string { return RegistryPrefix + channel }

// NodeSessionKey is session/node/<id>.
func NodeSessionKey(id int64) string { return NodeSessionPrefix + strconv.FormatInt(id, 10) }

// NodePrefix is channel/<id>/, the prefix a node watches.
func NodePrefix(id int64) string { return ChannelPrefix + strconv.FormatInt(id, 10) + "/" }

// ChannelKey is channel/<id>/<channel>; id 0 means channel/remaining/<channel>.
func ChannelKey(id int64, channel string) string {
	if id == 0 {
		return RemainingKey(channel)
	}
	return NodePrefix(id) + channel
}

// RemainingKey is channel/remaining/<channel>.
func RemainingKey(channel string) string { return RemainingPrefix + channel }

// ParseRegistryKey returns the channel of a registry/<channel> key.
func ParseRegistryKey(key string) (string, error) {
	ch, ok := strings.CutPrefix(key, RegistryPrefix)
	if !ok {
		return "", fmt.Errorf("%w: %q is not under %s", ErrBadKey, key, RegistryPrefix)
	}
	if err := ValidateChannel(ch); err != nil {
		return "", fmt.Errorf("%w: %q: %w", ErrBadKey, key, err)
	}
	return ch, nil
}

// ParseNodeSessionKey returns the node ID of a session/node/<id> key.
func ParseNodeSessionKey(key string) (int64, error) {
	s, ok := strings.CutPrefix(key, NodeSessionPrefix)
	if !ok {
		return 0, fmt.Errorf("%w: %q is not under %s", ErrBadKey, key, NodeSessionPrefix)
	}
	id, err := parseNodeID(s)
	if err != nil {
		return 0, fmt.Errorf("%w: %q: %w", ErrBadKey, key, err)
	}
	return id, nil
}

// ParseChannelKey splits channel/<id>/<channel> into (id, channel), and
// channel/remaining/<channel> into (0, channel).
func ParseChannelKey(key string) (nodeID int64, channel string, err error) {
	return parseNodeChannelKey(key, ChannelPrefix, true)
}

// parseNodeChannelKey splits <prefix><id>/<channel> into (id, channel);
// with remaining, the node segment "remaining" is (0, channel).
func parseNodeChannelKey(key, prefix string, remaining bool) (int64, string, error) {
	rest, ok := strings.CutPrefix(key, prefix)
	if !ok {
		return 0, "", fmt.Errorf("%w: %q is not under %s", ErrBadKey, key, prefix)
	}
	seg, ch, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, "", fmt.Errorf("%w: %q has no channel segment", ErrBadKey, key)
	}
	if err := ValidateChannel(ch); err != nil {
		return 0, "", fmt.Errorf("%w: %q: %w", ErrBadKey, key, err)
	}
	if remaining && seg == remainingSegment {
		return 0, ch, nil
	}
	id, err := parseNodeID(seg)
	if err != nil {
		return 0, "", fmt.Errorf("%w: %q: %w", ErrBadKey, key, err)
	}
	return id, ch, nil
}

// NodePreparePrefix is prepare/<id>/, the prefix a node that can prepare
// watches.
func NodePreparePrefix(id int64) string { return PreparePrefix + strconv.FormatInt(id, 10) + "/" }

// PrepareKey is prepare/<id>/<channel>.
func PrepareKey(id int64, channel string) string { return NodePreparePrefix(id) + channel }

// ParsePrepareKey splits prepare/<id>/<channel> into (id, channel). Unlike
// channel/ there is no "remaining" segment: id is always > 0.
func ParsePrepareKey(key string) (nodeID int64, channel string, err error) {
	return parseNodeChannelKey(key, PreparePrefix, false)
}

// QuarantineKey is control/quarantine/<id>.
func QuarantineKey(id int64) string { return QuarantinePrefix + strconv.FormatInt(id, 10) }

// ParseQuarantineKey returns the node ID of a control/quarantine/<id> key.
func ParseQuarantineKey(key string) (int64, error) {
	s, ok := strings.CutPrefix(key, QuarantinePrefix)
	if !ok {
		return 0, fmt.Errorf("%w: %q is not under %s", ErrBadKey, key, QuarantinePrefix)
	}
	id, err := parseNodeID(s)
	if err != nil {
		return 0, fmt.Errorf("%w: %q: %w", ErrBadKey, key, err)
	}
	return id, nil
}

func parseNodeID(s string) (int64, error) {
	// Reject signs, leading zeros and spaces: one ID has one key.
	if s == "" || s[0] < '1' || s[0] > '9' {
		return 0, fmt.Errorf("%w: node segment %q", ErrInvalidNodeID, s)
	}
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: node segment %q", ErrInvalidNodeID, s)
	}
	return id, nil
}
