// Package linearize is the one porcupine model chanwatch's linearizability
// checks share (the conformance suite, the chaos tests, raftkv's own tests):
// a map of independent string registers with put, get and compare-and-swap,
// where a write's outcome may be unknown. It does no I/O.
package linearize

import (
	"fmt"
	"sort"

	"github.com/anishathalye/porcupine"
)

// Kind is the operation of an Input.
type Kind int

// Kinds.

const (
	Put Kind = iota + 1
	Get
	CAS
)

// Input is one call.
type Input struct {
	Kind Kind
	Key  string
	// Value is written by put and by a successful cas.
	Value string
	// Expect is the value a cas compares against.
	Expect string
}

// Output is what the call returned.
type Output struct {
	// Value is what a get, or a failed cas's Else get, read ("" when
	// missing).
	Value string
	// Swapped reports whether a cas's compare held.
	Swapped bool
	// Unknown marks a put or cas whose outcome is unknown.
	Unknown bool
}

// Model is the sequential specification the linearizability check
// holds a history to: every key is an independent register with put, get
// and compare-and-swap on the value. A missing key is the empty string; the
// histories never write the empty string, so the two cannot be confused.
// A write whose outcome is unknown (ErrUnknownOutcome, ErrUnavailable) is in
// the history with Unknown set and a return time after every other call, as
// in porcupine's etcd model: the checker may place it anywhere after its
// call, including after everything, where it changes nothing observed.
var Model = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		for _, op := range history {
			k := op.Input.(Input).Key
			byKey[k] = append(byKey[k], op)
		}
		keys := make([]string, 0, len(byKey))
		for k := range byKey {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		st, in, out := state.(string), input.(Input), output.(Output)
		switch in.Kind {
		case Put:
			return true, in.Value
		case Get:
			return out.Value == st, st
		case CAS:
			holds := st == in.Expect
			if out.Unknown {
				if holds {
					return true, in.Value
				}
				return true, st
			}
			if out.Swapped != holds {
				return false, st
			}
			if holds {
				return true, in.Value
			}
			// A failed cas read the value in its Else branch, atomically.
			return out.Value == st, st
		}
		return false, st
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(Input), output.(Output)
		switch in.Kind {
		case Put:
			return fmt.Sprintf("put(%s, %q)", in.Key, in.Value)
		case Get:
			return fmt.Sprintf("get(%s) -> %q", in.Key, out.Value)
		case CAS:
			if out.Unknown {
				return fmt.Sprintf("cas(%s, %q -> %q) -> unknown", in.Key, in.Expect, in.Value)
			}
			return fmt.Sprintf("cas(%s, %q -> %q) -> %v", in.Key, in.Expect, in.Value, out.Swapped)
		}
		return "?"
	},
}
