// Package audit checks MEP 7's invariants on a live root, at run time.
//
// Snapshot audits one List of a root (what `chanwatch check` runs): two
// keys for a channel, a registered channel with no assignment, a channel on
// a node with no live session, a corrupt value, an assignment for an
// unregistered channel, a leader key that is missing, corrupt or on no
// lease. Checker follows a root through a watch and checks the invariants at
// every revision; Recorder logs a node Handler's calls and checks that no
// channel runs on two processes at once. The conformance suites and the demo
// use the latter two.
//
// It only reads the store (Checker and Snapshot never write), and it must
// not import package testing: the CLI links it.
package audit
