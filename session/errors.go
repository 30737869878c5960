package session

import "errors"

// Errors. Session.Err and the functions of this package wrap them (with %w)
// so that errors.Is works; backend errors stay wrapped alongside.
var (
	// ErrExpired: the backend says the session's lease is gone (expired or
	// revoked by someone else).
	ErrExpired = errors.New("session: lease expired")
	// ErrFenced: no keep-alive was acknowledged before the fence deadline;
	// the session stopped itself before the lease could expire on the server.
	ErrFenced = errors.New("session: fenced (lease could not be renewed in time)")
	// ErrEvicted: the node's session key was deleted, replaced or marked
	// evicted by the coordinator; the session fenced itself at once.
	ErrEvicted = errors.New("session: node evicted (session key deleted or marked)")
	// ErrClosed: the session was closed or abandoned by its owner.
	ErrClosed = errors.New("session: closed")
	// ErrSessionDone: an operation needs a live session and it has ended.
	ErrSessionDone = errors.New("session: session is done")
	// ErrNoLeader: no coordinator holds the leader key.
	ErrNoLeader = errors.New("session: no leader")
	// ErrNodeNotFound: the node has no session key (never registered, or
	// its lease is gone).
	ErrNodeNotFound = errors.New("session: node not found")
	// ErrNodeEvicted: the node's session key is marked evicted: it is
	// fencing itself, and neither a drain nor an undrain applies to it.
	ErrNodeEvicted = errors.New("session: node evicted")
	// ErrNodeShuttingDown: Undrain refused a node that is stopping because
	// its own process is shutting down (meta.StopShutdown).
	ErrNodeShuttingDown = errors.New("session: node is shutting down")
	// ErrInvalidConfig: an option value was rejected by a constructor.
	ErrInvalidConfig = errors.New("session: invalid config")
)
