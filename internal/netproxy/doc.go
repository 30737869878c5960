// Package netproxy is a TCP proxy on loopback that a test controls, to put
// network faults between a client and a server: Pass forwards bytes both
// ways; Blackhole holds every connection open and forwards nothing, as a
// network partition does; Reset tears every connection down with a TCP RST
// and refuses new ones the same way, as a crashed peer or a firewall reject
// does; HoldUp holds what the client sends while what the server sends still
// reaches it, so that the client's requests are in flight for as long as the
// test wants (a one-way delay).
//
// A blackhole stops the copying, not the sockets: bytes sent meanwhile wait
// in the proxy's and the kernel's buffers and are delivered when the proxy
// passes again, as TCP retransmission delivers them after a short partition
// heals. So a request whose caller gave up during the partition may still
// reach the server afterwards: the "unknown outcome" a client must expect.
//
// netproxy is for tests and chaos runs only: it listens on 127.0.0.1,
// forwards to one target, and must not be used to carry production traffic.
package netproxy
