// Package meta is MEP 7's key layout and value schemas: the one place in
// chanwatch that formats or parses keys, and encodes or decodes the values
// stored under them. Everything else asks meta for a key and hands meta the
// bytes it read.
//
// Keys are relative to a backend's root (Milvus passes its own
// "by-dev/meta"-style root to the backend, not to meta):
//
//	registry/<channel>            ChannelSpec: the channels that should exist
//	session/node/<nodeID>         NodeSession, on the node's lease
//	session/node-id               node ID counter (decimal; IDs never reused)
//	session/coord                 coordinator leader key, on the leader's lease
//	channel/<nodeID>/<channel>    ChannelInfo: the MEP's assignment key
//	channel/remaining/<channel>   ChannelInfo with no owner (no live node)
//	control/balance-paused        present while balancing is paused
//	control/quarantine/<nodeID>   Quarantine: the leader keeps work off an unhealthy node
//
// Node prefixes always end in '/', so node 1 never sees node 12's keys.
// Values are versioned JSON so that `etcdctl get` stays readable. A value
// that cannot be decoded is reported as an error that wraps ErrCorruptValue
// and names the key; meta never drops it silently and never panics.
//
// meta does no I/O and holds no state.
package meta
