package meta

import (
	"encoding/json"
	"fmt"
)

// State is a channel assignment's state (the MEP's State).
type State int

// States. The coordinator writes ToWatch and ToRelease; the node answers
// with Watched or WatchFailure, and Released or ReleaseFailure.
const (
	// Unknown: the zero State, never written; a value that does not
	// decode has no state.
	Unknown State = iota
	// ToWatch: assigned, the node should start the channel (the MEP's
	// Unwatched, Milvus's Uncomplete).
	ToWatch
	// Watched: the node runs the channel (Milvus's Complete/WatchSuccess).
	Watched
	// WatchFailure: the node could not start it.
	WatchFailure
	// ToRelease: the node should stop the channel.
	ToRelease
	// Released: the node stopped it; the coordinator may place it elsewhere.
	Released
	// ReleaseFailure: the node could not stop it cleanly.
	ReleaseFailure
)

// StateUnknown is the old name of Unknown.
//
// Deprecated: use Unknown, named like the other states.
const StateUnknown = Unknown

var stateNames = [...]string{"Unknown", "ToWatch", "Watched", "WatchFailure", "ToRelease", "Released", "ReleaseFailure"}

// legacyStates are the names Milvus has used for the same states.
var legacyStates = map[string]State{
	"Uncomplete":     ToWatch,
	"Unwatched":      ToWatch,
	"Complete":       Watched,
	"WatchSuccess":   Watched,
	"ReleaseSuccess": Released,
}

func (s State) String() string {
	if s >= 0 && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Valid reports whether s is one of the six protocol states.
func (s State) Valid() bool { return s >= ToWatch && s <= ReleaseFailure }

// ParseState reads a state name, including Milvus's legacy names.
func ParseState(name string) (State, error) {
	for i := ToWatch; i <= ReleaseFailure; i++ {
		if stateNames[i] == name {
			return i, nil
		}
	}
	if s, ok := legacyStates[name]; ok {
		return s, nil
	}
	return Unknown, fmt.Errorf("%w: unknown state %q", ErrCorruptValue, name)
}

// MarshalJSON writes the state's name.
func (s State) MarshalJSON() ([]byte, error) {
	if !s.Valid() {
		return nil, fmt.Errorf("%w: cannot encode %v", ErrCorruptValue, s)
	}
	return json.Marshal(s.String())
}

// UnmarshalJSON reads a state name (legacy names included).
func (s *State) UnmarshalJSON(b []byte) error {
	var name string
	if err := json.Unmarshal(b, &name); err != nil {
		return fmt.Errorf("%w: state: %w", ErrCorruptValue, err)
	}
	st, err := ParseState(name)
	if err != nil {
		return err
	}
	*s = st
	return nil
}
