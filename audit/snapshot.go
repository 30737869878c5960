package audit

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
)

// Kind names one broken invariant that Snapshot finds.
type Kind string

// The kinds of problem Snapshot reports.
const (
	// TwoKeys: a channel has more than one key under channel/ (invariant 1).
	TwoKeys Kind = "two-keys"
	// Unassigned: a registered channel has no key under channel/
	// (invariant 3; briefly true after Register, until the leader places it).
	Unassigned Kind = "unassigned"
	// GoneOwner: a channel is assigned to a node with no session key. The
	// leader moves it one node TTL after it learned the lease went, so it
	// is a fault only when it lasts longer than that.
	GoneOwner Kind = "gone-owner"
	// Corrupt: a value under a chanwatch prefix does not decode, or a key
	// there does not parse.
	Corrupt Kind = "corrupt"
	// Unregistered: an assignment for a channel with no registry key.
	Unregistered Kind = "unregistered"
	// BadLeader: the leader key is missing, corrupt, or on no lease.
	BadLeader Kind = "leader"
	// BadPrepare: a channel has more than one warm-handoff request under
	// prepare/, or one on the node that holds its key under channel/.
	BadPrepare Kind = "prepare"
)

// Problem is one broken invariant.
type Problem struct {
	Kind    Kind   `json:"kind"`
	Channel string `json:"channel,omitempty"`
	Key     string `json:"key,omitempty"`
	NodeID  int64  `json:"node,omitempty"`
	Detail  string `json:"detail"`
}

func (p Problem) String() string {
	return fmt.Sprintf("%s: %s", p.Kind, p.Detail)
}

// Report is what Snapshot found in one List of a root.
type Report struct {
	Revision   int64  `json:"revision"`
	Keys       int    `json:"keys"`
	Registered int    `json:"registered"`
	Assigned   int    `json:"assigned"`
	LiveNodes  int    `json:"live_nodes"`
	Leader     string `json:"leader,omitempty"`
	// LeaderLease is the leader key's lease (0: none or no key).
	LeaderLease kv.LeaseID `json:"leader_lease,omitempty"`
	// NodeTTL is the largest TTL a live node advertises: about how long a
	// gone node's channels wait before they move (0 if no node is live).
	NodeTTL  time.Duration `json:"node_ttl"`
	Problems []Problem     `json:"problems"`
}

// Healthy reports whether no invariant is broken.
func (r *Report) Healthy() bool { return len(r.Problems) == 0 }

func (r *Report) add(k Kind, ch, key string, node int64, format string, args ...any) {
	r.Problems = append(r.Problems, Problem{Kind: k, Channel: ch, Key: key, NodeID: node, Detail: fmt.Sprintf(format, args...)})
}

// Snapshot audits items, a List of a whole root at revision rev, and
// returns every broken invariant, sorted by kind and channel. It decodes
// each value once and keeps a few maps keyed by channel: one pass over
// 100,000 channels takes well under a second (docs/BENCHMARKS.md).
func Snapshot(items []kv.KeyValue, rev int64) Report {
	r := Report{Revision: rev, Keys: len(items), Problems: []Problem{}}
	registered := make(map[string]bool)
	assigned := make(map[string][]string) // channel -> keys under channel/
	owner := make(map[string]int64)       // channel key -> node ID (0: remaining)
	live := make(map[int64]meta.NodeSession)
	prepares := make(map[string][]string) // channel -> keys under prepare/
	prepNode := make(map[string]int64)    // prepare key -> node ID
	leaderSeen := false
	for _, it := range items {
		key := it.Key
		switch {
		case strings.HasPrefix(key, meta.ChannelPrefix):
			id, ch, err := meta.ParseChannelKey(key)
			if err != nil {
				r.add(Corrupt, "", key, 0, "key %s does not parse: %v", key, err)
				continue
			}
			assigned[ch] = append(assigned[ch], key)
			owner[key] = id
			if _, err := meta.DecodeChannelInfo(key, it.Value); err != nil {
				r.add(Corrupt, ch, key, id, "assignment %s: %v", key, err)
			}
		case strings.HasPrefix(key, meta.RegistryPrefix):
			ch, err := meta.ParseRegistryKey(key)
			if err != nil {
				r.add(Corrupt, "", key, 0, "key %s does not parse: %v", key, err)
				continue
			}
			// A corrupt spec still names a registered channel: report it
			// once, as corrupt, not again as unregistered or unassigned.
			registered[ch] = true
			if _, err := meta.DecodeChannelSpec(key, it.Value); err != nil {
				r.add(Corrupt, ch, key, 0, "registry %s: %v", key, err)
			}
		case strings.HasPrefix(key, meta.NodeSessionPrefix):
			id, err := meta.ParseNodeSessionKey(key)
			if err != nil {
				r.add(Corrupt, "", key, 0, "key %s does not parse: %v", key, err)
				continue
			}
			s, err := meta.DecodeNodeSession(key, it.Value)
			if err != nil {
				r.add(Corrupt, "", key, id, "node session %s: %v", key, err)
			}
			live[id] = s // a session key, even a corrupt one, is a live lease
		case key == meta.CoordinatorKey:
			leaderSeen = true
			r.LeaderLease = it.Lease
			s, err := meta.DecodeCoordSession(key, it.Value)
			switch {
			case err != nil:
				r.add(BadLeader, "", key, 0, "leader key %s is corrupt: %v (a standby deletes it after one session TTL)", key, err)
			case it.Lease == kv.NoLease:
				r.add(BadLeader, "", key, 0, "leader key %s (coordinator %q) is on no lease: it never expires, so no standby can take over", key, s.ID)
			}
			r.Leader = s.ID
		case strings.HasPrefix(key, meta.QuarantinePrefix):
			if _, err := meta.DecodeQuarantine(key, it.Value); err != nil {
				r.add(Corrupt, "", key, 0, "quarantine %s: %v", key, err)
			}
		case strings.HasPrefix(key, meta.PreparePrefix):
			id, ch, err := meta.ParsePrepareKey(key)
			if err != nil {
				r.add(Corrupt, "", key, 0, "key %s does not parse: %v", key, err)
				continue
			}
			prepares[ch] = append(prepares[ch], key)
			prepNode[key] = id
			if _, err := meta.DecodePrepareInfo(key, it.Value); err != nil {
				r.add(Corrupt, ch, key, id, "prepare request %s: %v", key, err)
			}
		}
	}
	if !leaderSeen {
		r.add(BadLeader, "", meta.CoordinatorKey, 0, "no leader key %s: no coordinator leads", meta.CoordinatorKey)
	}
	for _, s := range live {
		r.NodeTTL = max(r.NodeTTL, s.TTL)
	}
	r.Registered, r.Assigned, r.LiveNodes = len(registered), len(assigned), len(live)
	ttl := "no live node advertises a TTL"
	if r.NodeTTL > 0 {
		ttl = fmt.Sprintf("live nodes advertise a TTL of %v", r.NodeTTL)
	}
	for ch, keys := range assigned {
		if len(keys) > 1 {
			slices.Sort(keys)
			r.add(TwoKeys, ch, keys[0], 0, "channel %s has %d keys under channel/: %s", ch, len(keys), strings.Join(keys, ", "))
		}
		if !registered[ch] {
			r.add(Unregistered, ch, keys[0], owner[keys[0]], "channel %s is assigned (%s) but not registered", ch, keys[0])
		}
		for _, k := range keys {
			if id := owner[k]; id != 0 {
				if _, ok := live[id]; !ok {
					r.add(GoneOwner, ch, k, id, "channel %s is on node %d, which has no session (it moves about one node TTL after the leader saw the lease go; %s)", ch, id, ttl)
				}
			}
		}
	}
	for ch, pks := range prepares {
		slices.Sort(pks)
		if len(pks) > 1 {
			r.add(BadPrepare, ch, pks[0], 0, "channel %s has %d keys under prepare/: %s", ch, len(pks), strings.Join(pks, ", "))
		}
		for _, pk := range pks {
			for _, k := range assigned[ch] {
				if id := owner[k]; id != 0 && id == prepNode[pk] {
					r.add(BadPrepare, ch, pk, id, "channel %s has a prepare request %s on its owner (%s)", ch, pk, k)
				}
			}
		}
	}
	for ch := range registered {
		if len(assigned[ch]) == 0 {
			r.add(Unassigned, ch, meta.RegistryKey(ch), 0, "registered channel %s has no key under channel/", ch)
		}
	}
	slices.SortFunc(r.Problems, func(a, b Problem) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Channel, b.Channel), cmp.Compare(a.Key, b.Key))
	})
	return r
}

// Follower runs Snapshot on successive Lists of one root and reports a
// problem that can be transient (Unassigned, GoneOwner, Unregistered,
// BadLeader: each is true for a moment in a healthy failover) only once it
// has lasted longer than Grace. TwoKeys, BadPrepare and Corrupt are never
// transient and are reported at once.
type Follower struct {
	Grace time.Duration
	first map[string]time.Time
}

// Next audits one List taken at now and returns the problems to report.
func (f *Follower) Next(items []kv.KeyValue, rev int64, now time.Time) Report {
	r := Snapshot(items, rev)
	seen := make(map[string]time.Time, len(r.Problems))
	kept := r.Problems[:0]
	for _, p := range r.Problems {
		id := string(p.Kind) + "\x00" + p.Key
		at, ok := f.first[id]
		if !ok {
			at = now
		}
		seen[id] = at
		if never := p.Kind == TwoKeys || p.Kind == Corrupt || p.Kind == BadPrepare; never || now.Sub(at) > f.Grace {
			if !never {
				p.Detail += fmt.Sprintf(" (for %v)", now.Sub(at).Round(time.Second))
			}
			kept = append(kept, p)
		}
	}
	f.first = seen
	r.Problems = kept
	return r
}
