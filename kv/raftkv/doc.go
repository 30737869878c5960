// Package raftkv is chanwatch's embedded, replicated kv.Backend: a cluster
// of Nodes on github.com/hashicorp/raft (TCP or mutual-TLS transport,
// raft-boltdb/v2 log and stable store, file snapshots) whose replicated
// state machine is the same memkv.Store that memkv serves, so both
// backends share one MVCC implementation and one set of semantics.
//
// Every Node serves the whole kv.Backend contract. Writes (Txn with a write,
// Grant, Revoke, Compact) go through the log: a follower forwards them to
// the leader over the node's own port (raft traffic and forwarded requests
// share one listener). The revision is the store's counter, one per write
// txn, not the raft index. Reads are linearizable by read index: the leader
// confirms its leadership (VerifyLeader) after reading its commit index,
// once an entry of its own term has applied; a follower asks the leader for
// that index; either node then waits until its own store has applied it and
// reads locally. Watches are served by each node's own store, so a watcher
// on a follower sees the events of the leader in the same revisions.
//
// Leases: IDs are the log index of the grant; deadlines live only in the
// leader's memory, on its clock (WithClock); keep-alives go to the leader
// and are not logged; expiry is proposed through the log by a leader that
// has verified its leadership; a new leader gives every lease a full TTL
// from its takeover, as etcd does.
//
// Errors: a write proposed but not known to have applied (leadership lost
// while committing, context done, node closed) wraps kv.ErrUnknownOutcome.
// Raft errors that say the entry never reached the log (not the leader, a
// leadership transfer, an enqueue timeout) are retried on the current
// leader instead, within WithRequestTimeout; no leader within it is
// kv.ErrUnavailable. Close makes later calls and open watches fail with
// kv.ErrClosed.
//
// A Node is a kv.Backend over the whole keyspace. Node.Client and
// Node.ClientAt hand out handles with their own Close (a process sharing
// the node), ClientAt under a root, as etcdkv confines keys under its root.
// StartCluster runs a loopback cluster for tests and demos.
//
// Security: WithTLS runs every connection between nodes over mutual TLS.
// The first byte that tells raft traffic from forwarded requests travels
// inside the TLS stream, so both are encrypted and authenticated alike:
// each node presents its certificate and verifies the other's against the
// cluster's CA pool (the dialer also checks the dialed host, an IP SAN for
// an IP address), so a node or client without a certificate from that CA
// can neither replicate, be replicated to, nor forward a request. A
// handshake must complete within a few seconds, on its own goroutine, so
// a stalled peer blocks no one else. Join first makes one request to the
// new node over TLS and refuses it (kv.ErrPermissionDenied) if either side
// rejects the other, so an unauthenticated node never becomes a voter. TLS
// authenticates nodes, it does not authorize them: any holder of a
// certificate from the CA is a peer.
//
// raftkv must not: serve a read from a replica that has not caught up with
// the leader's verified commit index; let any replica expire a lease on its
// own clock; or keep a second copy of the MVCC logic (it belongs to
// memkv.Store). Without WithTLS it neither authenticates nor encrypts
// traffic between nodes: run such a cluster on a trusted network.
package raftkv
