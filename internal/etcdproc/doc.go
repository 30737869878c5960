// Package etcdproc runs real etcd members as separate processes (the bin/etcd
// binary that `make etcd` builds from this module's own etcd version) on
// loopback, for tests and benchmarks that need what an in-process server
// cannot give: several members, a member killed with SIGKILL and restarted
// from its data dir, a member frozen with SIGSTOP.
//
// Start launches an n-member cluster on free loopback ports, one data dir
// and one log file per member under the caller's dir, and returns once every
// member reports healthy (it has a leader and serves). Kill, Restart, Stop
// (SIGSTOP), Cont (SIGCONT) and Terminate act on one member and keep its
// ports, so the others and every client see the same member come back.
// Children get SIGKILL if the process that started them dies
// (Pdeathsig), so a crashed test leaves no etcd behind.
//
// Binary finds the binary: $CHANWATCH_ETCD_BIN, else bin/etcd at the root
// of the chanwatch module that contains the working directory, which it
// builds with `go build` when missing.
//
// This package must not be used to run production etcd: members have no TLS
// and no auth, the ports are picked with a bind-then-release race (Start
// retries when it loses it), and it only speaks loopback.
package etcdproc
