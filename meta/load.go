package meta

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
)

// LoadPrefix holds the measured loads nodes report: load/<nodeID> is a
// LoadReport on the node's lease, so it vanishes with the node. It is
// advisory: the coordinator's weight-aware policy uses a channel's
// measured load in place of its spec's Weight, and nothing about safety
// reads it.
const LoadPrefix = "load/"

// LoadKey is load/<id>.
func LoadKey(id int64) string { return LoadPrefix + strconv.FormatInt(id, 10) }

// ParseLoadKey returns the node ID of a load/<id> key.
func ParseLoadKey(key string) (int64, error) {
	s, ok := strings.CutPrefix(key, LoadPrefix)
	if !ok {
		return 0, fmt.Errorf("%w: %q is not under %s", ErrBadKey, key, LoadPrefix)
	}
	id, err := parseNodeID(s)
	if err != nil {
		return 0, fmt.Errorf("%w: %q: %w", ErrBadKey, key, err)
	}
	return id, nil
}

// LoadReport is load/<nodeID>: the measured load of the channels a node
// runs, in the unit of ChannelSpec.Weight, as its handler last reported
// them (the node rewrites it only when a figure moved by more than its
// hysteresis).
type LoadReport struct {
	Node  int64              `json:"node"`
	Time  time.Time          `json:"time"`
	Loads map[string]float64 `json:"loads"`
}

// Validate checks the node ID, the channel names and every load: finite,
// >= 0 and at most MaxWeight.
func (l LoadReport) Validate() error {
	if err := ValidateNodeID(l.Node); err != nil {
		return err
	}
	for _, ch := range slices.Sorted(maps.Keys(l.Loads)) {
		if err := ValidateChannel(ch); err != nil {
			return err
		}
		if x := l.Loads[ch]; x != 0 {
			if err := validateAmount("load of "+ch, x, MaxWeight); err != nil {
				return err
			}
		}
	}
	return nil
}

// EncodeLoadReport encodes a load report after validating it.
func EncodeLoadReport(l LoadReport) ([]byte, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	return encode(&l)
}

// DecodeLoadReport decodes the value of key (used in errors).
func DecodeLoadReport(key string, b []byte) (LoadReport, error) {
	var l LoadReport
	if err := decode(key, b, &l); err != nil {
		return LoadReport{}, err
	}
	if err := l.Validate(); err != nil {
		return LoadReport{}, fmt.Errorf("%w: %s: %w", ErrCorruptValue, key, err)
	}
	return l, nil
}
