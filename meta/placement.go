package meta

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
)

// Placement inputs: a channel's weight and constraints (ChannelSpec) and a
// node's capacity and labels (NodeSession). All are optional; a value that
// uses none of them is written exactly as before (schema version 1), and a
// value that uses any is written as PlacementSchemaVersion, so that a
// reader that predates them rejects it as corrupt (it holds the channel, or
// treats the node as unschedulable) rather than silently dropping a
// constraint. Stored values of version 1 keep decoding.

// PlacementSchemaVersion is the schema version of a ChannelSpec or
// NodeSession that carries a weight, capacity, labels or constraints.
const PlacementSchemaVersion = 2

// Bounds of the placement inputs.
const (
	// MaxWeight bounds ChannelSpec.Weight and MaxCapacity bounds
	// NodeSession.Capacity, so that sums over 10^6 channels stay exact
	// enough in float64 and a typo (1e300) is refused.
	MaxWeight   = 1e6
	MaxCapacity = 1e6
	// MaxLabels bounds the labels of a node and the required labels of a
	// channel; MaxLabelLen bounds a label's key and its value.
	MaxLabels   = 32
	MaxLabelLen = 63
)

// ErrInvalidPlacement: a weight, capacity, label or constraint that cannot
// be stored (not finite, out of range, malformed).
var ErrInvalidPlacement = errors.New("meta: invalid placement input")

// DefaultWeight and DefaultCapacity are what an unset (zero) Weight or
// Capacity means.
const (
	DefaultWeight   = 1.0
	DefaultCapacity = 1.0
)

// EffectiveWeight is s.Weight, or DefaultWeight when unset.
func (s ChannelSpec) EffectiveWeight() float64 {
	if s.Weight == 0 {
		return DefaultWeight
	}
	return s.Weight
}

// EffectiveCapacity is s.Capacity, or DefaultCapacity when unset.
func (s NodeSession) EffectiveCapacity() float64 {
	if s.Capacity == 0 {
		return DefaultCapacity
	}
	return s.Capacity
}

// ValidateWeight checks a channel weight: 0 (unset: DefaultWeight), or
// finite, > 0 and at most MaxWeight.
func ValidateWeight(w float64) error {
	return validateAmount("weight", w, MaxWeight)
}

// ValidateCapacity checks a node capacity: 0 (unset: DefaultCapacity), or
// finite, > 0 and at most MaxCapacity.
func ValidateCapacity(c float64) error {
	return validateAmount("capacity", c, MaxCapacity)
}

func validateAmount(what string, x, limit float64) error {
	switch {
	case x == 0:
		return nil
	case math.IsNaN(x) || math.IsInf(x, 0):
		return fmt.Errorf("%w: %s %v is not a finite number", ErrInvalidPlacement, what, x)
	case x < 0:
		return fmt.Errorf("%w: %s %v must be > 0", ErrInvalidPlacement, what, x)
	case x > limit:
		return fmt.Errorf("%w: %s %v is above the limit %v", ErrInvalidPlacement, what, x, limit)
	}
	return nil
}

// ValidateLabelKey checks a label key (also a Spread key): 1 to MaxLabelLen
// bytes of ASCII letters, digits, '-', '_', '.' and '/', starting and
// ending with a letter or digit (as Kubernetes label names).
func ValidateLabelKey(k string) error {
	if err := validateLabelPart(k); err != nil {
		return fmt.Errorf("%w: label key %q: %s", ErrInvalidPlacement, k, err)
	}
	return nil
}

// ValidateLabelValue checks a label value: the same rules as a key.
func ValidateLabelValue(v string) error {
	if err := validateLabelPart(v); err != nil {
		return fmt.Errorf("%w: label value %q: %s", ErrInvalidPlacement, v, err)
	}
	return nil
}

func validateLabelPart(s string) error {
	switch {
	case s == "":
		return errors.New("empty")
	case len(s) > MaxLabelLen:
		return fmt.Errorf("%d bytes, max %d", len(s), MaxLabelLen)
	}
	alnum := func(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' }
	for i := 0; i < len(s); i++ {
		c := s[i]
		if alnum(c) || (c == '-' || c == '_' || c == '.' || c == '/') && i > 0 && i < len(s)-1 {
			continue
		}
		return fmt.Errorf("byte %d (%q): want letters, digits, and '-', '_', '.', '/' inside", i, c)
	}
	return nil
}

// Labels is an immutable set of key=value labels: a node's labels, or the
// labels a channel requires. It is comparable (so are the structs that hold
// it) and kept in one canonical form, sorted by key; the zero Labels is
// the empty set. It encodes in JSON as an object ({"zone":"a"}).
type Labels struct{ s string } // "k1=v1,k2=v2": keys and values hold no ',' or '='

// NewLabels validates m (ValidateLabels) and returns it as Labels.
func NewLabels(m map[string]string) (Labels, error) {
	if err := ValidateLabels(m); err != nil {
		return Labels{}, err
	}
	var b strings.Builder
	for i, k := range slices.Sorted(maps.Keys(m)) {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(m[k])
	}
	return Labels{b.String()}, nil
}

// MustLabels returns the labels "key=value"... and panics on a malformed
// one: for literals in tests and examples.
func MustLabels(items ...string) Labels {
	l, err := ParseLabels(items)
	if err != nil {
		panic(err)
	}
	return l
}

// ParseLabels parses "key=value" items (as the CLI's --label takes them);
// a key given twice is an error.
func ParseLabels(items []string) (Labels, error) {
	if len(items) == 0 {
		return Labels{}, nil
	}
	m := make(map[string]string, len(items))
	for _, it := range items {
		k, v, err := ParseLabel(it)
		if err != nil {
			return Labels{}, err
		}
		if old, dup := m[k]; dup {
			return Labels{}, fmt.Errorf("%w: label key %q given twice (%q and %q)", ErrInvalidPlacement, k, old, v)
		}
		m[k] = v
	}
	return NewLabels(m)
}

// String is the canonical form "k1=v1,k2=v2" ("" for none).
func (l Labels) String() string { return l.s }

// IsZero reports whether l is empty.
func (l Labels) IsZero() bool { return l.s == "" }

// Len is the number of labels.
func (l Labels) Len() int {
	if l.s == "" {
		return 0
	}
	return strings.Count(l.s, ",") + 1
}

// Get returns the value of key k.
func (l Labels) Get(k string) (string, bool) {
	for rest := l.s; rest != ""; {
		var item string
		item, rest, _ = strings.Cut(rest, ",")
		if key, v, _ := strings.Cut(item, "="); key == k {
			return v, true
		}
	}
	return "", false
}

// Map returns the labels as a new map (nil for none).
func (l Labels) Map() map[string]string {
	if l.s == "" {
		return nil
	}
	m := map[string]string{}
	for _, item := range strings.Split(l.s, ",") {
		k, v, _ := strings.Cut(item, "=")
		m[k] = v
	}
	return m
}

// Meets reports whether l carries every label of require.
func (l Labels) Meets(require Labels) bool {
	if require.s == "" {
		return true
	}
	for _, item := range strings.Split(require.s, ",") {
		k, v, _ := strings.Cut(item, "=")
		if got, ok := l.Get(k); !ok || got != v {
			return false
		}
	}
	return true
}

// MarshalJSON writes l as a JSON object.
func (l Labels) MarshalJSON() ([]byte, error) {
	m := l.Map()
	if m == nil {
		return []byte("{}"), nil
	}
	return json.Marshal(m)
}

// UnmarshalJSON reads a JSON object of string values and validates it.
func (l *Labels) UnmarshalJSON(b []byte) error {
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	nl, err := NewLabels(m)
	if err != nil {
		return err
	}
	*l = nl
	return nil
}

// ValidateLabels checks a label set given as a map.
func ValidateLabels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return fmt.Errorf("%w: %d labels, max %d", ErrInvalidPlacement, len(labels), MaxLabels)
	}
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		if err := ValidateLabelKey(k); err != nil {
			return err
		}
		if err := ValidateLabelValue(labels[k]); err != nil {
			return err
		}
	}
	return nil
}

// ParseLabel parses "key=value".
func ParseLabel(s string) (key, value string, err error) {
	k, v, ok := strings.Cut(s, "=")
	if !ok {
		return "", "", fmt.Errorf("%w: label %q: want key=value", ErrInvalidPlacement, s)
	}
	if err := ValidateLabelKey(k); err != nil {
		return "", "", err
	}
	if err := ValidateLabelValue(v); err != nil {
		return "", "", err
	}
	return k, v, nil
}

// validatePlacement checks a spec's weight and constraints.
func (s ChannelSpec) validatePlacement() error {
	if err := ValidateWeight(s.Weight); err != nil {
		return fmt.Errorf("channel %q: %w", s.Name, err)
	}
	if s.Require.Len() > MaxLabels {
		return fmt.Errorf("channel %q: require: %w: %d labels, max %d", s.Name, ErrInvalidPlacement, s.Require.Len(), MaxLabels)
	}
	if s.Spread != "" {
		if err := ValidateLabelKey(s.Spread); err != nil {
			return fmt.Errorf("channel %q: spread: %w", s.Name, err)
		}
	}
	return nil
}

func (s ChannelSpec) schemaVersion() int {
	if s.Weight != 0 || !s.Require.IsZero() || s.Spread != "" {
		return PlacementSchemaVersion
	}
	return SchemaVersion
}

// validatePlacement checks a session's capacity and labels.
func (s NodeSession) validatePlacement() error {
	if err := ValidateCapacity(s.Capacity); err != nil {
		return fmt.Errorf("node %d: %w", s.ID, err)
	}
	if s.Labels.Len() > MaxLabels {
		return fmt.Errorf("node %d: labels: %w: %d labels, max %d", s.ID, ErrInvalidPlacement, s.Labels.Len(), MaxLabels)
	}
	return nil
}

func (s NodeSession) schemaVersion() int {
	if s.Capacity != 0 || !s.Labels.IsZero() {
		return PlacementSchemaVersion
	}
	return SchemaVersion
}
