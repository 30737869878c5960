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

	// The prepare states (warm handoff) are the states of a
	// prepare/<nodeID>/<channel> key, never of an assignment under
	// channel/: the coordinator writes ToPrepare, the node answers Prepared
	// or PrepareFailure. Preparing never makes the node the channel's owner.

	// ToPrepare: the node should prepare the channel (load state, catch up)
	// without running it.
	ToPrepare
	// Prepared: the node prepared it; a ToWatch may follow.
	Prepared
	// PrepareFailure: the node could not prepare it.
	PrepareFailure
)

// StateUnknown is the old name of Unknown.
//
// Deprecated: use Unknown, named like the other states.
const StateUnknown = Unknown

var stateNames = [...]string{"Unknown", "ToWatch", "Watched", "WatchFailure", "ToRelease", "Released", "ReleaseFailure",
	"ToPrepare", "Prepared", "PrepareFailure"}

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

// Valid reports whether s is one of the six protocol states of an
// assignment (channel/ keys). The prepare states are not.
func (s State) Valid() bool { return s >= ToWatch && s <= ReleaseFailure }

// ValidPrepare reports whether s is one of the three states of a prepare
// key (ToPrepare, Prepared, PrepareFailure).
func (s State) ValidPrepare() bool { return s >= ToPrepare && s <= PrepareFailure }

// ParseState reads a state name, including Milvus's legacy names.
func ParseState(name string) (State, error) {
	if s, ok := stateByName(name); ok {
		return s, nil
	}
	return Unknown, fmt.Errorf("%w: unknown state %q", ErrCorruptValue, name)
}

// stateByName is ParseState without the error (name does not escape, so a
// caller's string(bytes) needs no allocation).
func stateByName(name string) (State, bool) {
	for i := ToWatch; i <= PrepareFailure; i++ {
		if stateNames[i] == name {
			return i, true
		}
	}
	s, ok := legacyStates[name]
	return s, ok
}

// MarshalJSON writes the state's name.
func (s State) MarshalJSON() ([]byte, error) {
	if !s.Valid() && !s.ValidPrepare() {
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
