package audit

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
)

// KeyChange is one change to one assignment key, as the Checker saw it.
type KeyChange struct {
	Rev int64
	// Time is the Checker's clock when it applied the change (on a fake
	// clock, the time of the change to within one step).
	Time time.Time
	Key  string
	Type kv.EventType
	// NodeID is the key's node segment (0: remaining).
	NodeID int64
	// Info is the decoded value of a PUT (zero for a DELETE or a corrupt value).
	Info meta.ChannelInfo
	// Corrupt is set when a PUT's value did not decode.
	Corrupt bool
}

func (k KeyChange) String() string {
	if k.Type == kv.EventDelete {
		return fmt.Sprintf("@%d DELETE %s", k.Rev, k.Key)
	}
	if k.Corrupt {
		return fmt.Sprintf("@%d PUT %s <corrupt>", k.Rev, k.Key)
	}
	return fmt.Sprintf("@%d PUT %s %v token=%d attempts=%d progress=%d", k.Rev, k.Key, k.Info.State, k.Info.AssignRevision, k.Info.Attempts, k.Info.Progress)
}

// nodeSession is what the Checker knows of a node's session key.
type nodeSession struct {
	info     meta.NodeSession
	lease    kv.LeaseID
	created  int64
	stopping int64 // revision at which it was marked stopping
	deleted  int64
}

// coordTerm is one leadership: the leader key from its creation to its deletion.
type coordTerm struct {
	id      string
	create  int64
	deleted int64 // 0 while it lasts
}

// Checker follows a scenario's whole root through its own handle and checks
// the protocol invariants at every revision the store goes through:
//
//   - (1) a channel has at most one key under channel/;
//   - (3) a registered channel, once it has a key under channel/, keeps one
//     while it stays registered (a move is one txn that deletes and puts, so
//     no revision may show it without a key);
//   - every write a coordinator makes carries its leadership guard, and lands
//     within that leadership (see WrapCoordinator);
//   - every channel key a node writes is under its own prefix and is a
//     compare-and-swap on the key's mod revision (see WrapNode), and so is
//     every answer to a prepare request (prepare/<node>/<channel>);
//   - warm handoff (prepare/): a channel has at most one prepare key, and
//     never on the node that holds its key under channel/ (a preparation
//     never owns the channel);
//   - for nodes named with ExpectFence, the node's handler runs nothing any
//     more when its session key is deleted.
//
// It also tells its Recorder when node sessions end, which invariant (2)
// needs. Violations are collected, never fatal: the scenario checks them
// after every step. Methods are safe for concurrent use.
type Checker struct {
	b   kv.Backend
	rec *Recorder

	mu          sync.Mutex
	rev         int64
	progress    chan struct{} // closed and replaced whenever rev moves
	kvs         map[string]kv.KeyValue
	chanKeys    map[string]map[string]bool // channel -> keys under channel/
	decoded     map[string]Assignment      // channel key -> its decoded value
	prepKeys    map[string]map[string]bool // channel -> keys under prepare/
	prepDecoded map[string]Assignment      // prepare key -> its decoded value
	prepHistory map[string][]KeyChange     // channel -> changes under prepare/
	registered  map[string]bool
	placed      map[string]bool
	nodes       map[int64]*nodeSession
	terms       []*coordTerm
	history     map[string][]KeyChange
	expectFence map[int64]bool
	pending     []pendingWrite
	relists     int
	violations  []string
}

// pendingWrite is a coordinator write waiting for the Checker to reach its
// revision.
type pendingWrite struct {
	coord string
	token int64
	rev   int64
}

// NewChecker returns a Checker reading through b (a handle of its own, which
// the scenario never faults) and reporting node session ends to rec.
func NewChecker(b kv.Backend, rec *Recorder) *Checker {
	return &Checker{
		b:           b,
		rec:         rec,
		progress:    make(chan struct{}),
		kvs:         make(map[string]kv.KeyValue),
		chanKeys:    make(map[string]map[string]bool),
		decoded:     make(map[string]Assignment),
		prepKeys:    make(map[string]map[string]bool),
		prepDecoded: make(map[string]Assignment),
		prepHistory: make(map[string][]KeyChange),
		registered:  make(map[string]bool),
		placed:      make(map[string]bool),
		nodes:       make(map[int64]*nodeSession),
		history:     make(map[string][]KeyChange),
		expectFence: make(map[int64]bool),
	}
}

// Run lists the root and then watches it until ctx ends, re-listing when
// its watch is compacted away and resuming when it breaks. It returns nil
// when ctx ends, or the first error it cannot get past.
func (c *Checker) Run(ctx context.Context) error {
	from, err := c.relist(ctx)
	for err == nil {
		var wr kv.WatchResponse
		from, wr = c.watch(ctx, from)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(wr.Err, kv.ErrCompacted):
			from, err = c.relist(ctx)
		case errors.Is(wr.Err, kv.ErrClosed):
			return wr.Err
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// watch follows the root from rev from until the watch ends, returning the
// revision to resume from and the final response.
func (c *Checker) watch(ctx context.Context, from int64) (int64, kv.WatchResponse) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for wr := range c.b.Watch(wctx, "", from) {
		if wr.Err != nil {
			return from, wr
		}
		// Apply one revision at a time: a response may carry several txns.
		for i := 0; i < len(wr.Events); {
			j := i
			for j < len(wr.Events) && wr.Events[j].Revision() == wr.Events[i].Revision() {
				j++
			}
			c.apply(wr.Events[i].Revision(), wr.Events[i:j])
			from = wr.Events[i].Revision() + 1
			i = j
		}
	}
	return from, kv.WatchResponse{}
}

// relist replaces the state with a fresh List (after a compaction the
// history in between is lost; the new state is still checked).
func (c *Checker) relist(ctx context.Context) (int64, error) {
	for {
		items, rev, err := c.b.List(ctx, "")
		if err == nil {
			c.reset(items, rev)
			return rev + 1, nil
		}
		if ctx.Err() != nil || errors.Is(err, kv.ErrClosed) {
			return 0, err
		}
	}
}

func (c *Checker) reset(items []kv.KeyValue, rev int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rev > 0 {
		c.relists++
	}
	listed := make(map[string]bool, len(items))
	events := make([]kv.Event, 0, len(items))
	for _, it := range items {
		listed[it.Key] = true
		events = append(events, kv.Event{Type: kv.EventPut, KV: it})
	}
	// Keys that vanished in the gap are applied as deletions at rev.
	for k, v := range c.kvs {
		if !listed[k] {
			events = append(events, kv.Event{Type: kv.EventDelete, KV: kv.KeyValue{Key: k, ModRevision: rev, Lease: v.Lease}})
		}
	}
	c.kvs = make(map[string]kv.KeyValue, len(items))
	c.chanKeys = make(map[string]map[string]bool)
	c.decoded = make(map[string]Assignment)
	c.prepKeys = make(map[string]map[string]bool)
	c.prepDecoded = make(map[string]Assignment)
	c.applyLocked(rev, events, true)
}

// apply folds the events of one revision into the state and checks it.
func (c *Checker) apply(rev int64, events []kv.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.applyLocked(rev, events, false)
}

func (c *Checker) applyLocked(rev int64, events []kv.Event, snapshot bool) {
	touched := make(map[string]bool)
	var now time.Time
	if c.rec != nil {
		now = c.rec.clock.Now()
	}
	for _, e := range events {
		key := e.KV.Key
		if e.Type == kv.EventPut {
			c.kvs[key] = e.KV
		} else {
			delete(c.kvs, key)
		}
		switch {
		case strings.HasPrefix(key, meta.ChannelPrefix):
			// A foreign key (ch ""): the components must skip it, and so do we.
			if ch := track(e, rev, now, snapshot, meta.ParseChannelKey, meta.DecodeChannelInfo, c.chanKeys, c.decoded, c.history); ch != "" {
				touched[ch] = true
			}
		case strings.HasPrefix(key, meta.PreparePrefix):
			if ch := track(e, rev, now, snapshot, meta.ParsePrepareKey, meta.DecodePrepareInfo, c.prepKeys, c.prepDecoded, c.prepHistory); ch != "" {
				touched[ch] = true
			}
		case strings.HasPrefix(key, meta.RegistryPrefix):
			ch, err := meta.ParseRegistryKey(key)
			if err != nil {
				continue
			}
			touched[ch] = true
			if _, derr := meta.DecodeChannelSpec(key, e.KV.Value); e.Type == kv.EventPut && derr == nil {
				c.registered[ch] = true
			} else {
				delete(c.registered, ch)
				delete(c.placed, ch)
			}
		case strings.HasPrefix(key, meta.NodeSessionPrefix):
			id, err := meta.ParseNodeSessionKey(key)
			if err != nil {
				continue
			}
			c.nodeEventLocked(rev, id, e)
		case key == meta.CoordinatorKey:
			c.coordEventLocked(rev, e)
		}
	}
	if snapshot {
		// After a relist, re-derive registration from the listed keys.
		c.registered = make(map[string]bool)
		for k, it := range c.kvs {
			if ch, err := meta.ParseRegistryKey(k); err == nil {
				if _, derr := meta.DecodeChannelSpec(k, it.Value); derr != nil {
					continue
				}
				c.registered[ch] = true
				touched[ch] = true
			}
		}
	}
	for ch := range touched {
		keys := c.chanKeys[ch]
		if len(keys) > 1 {
			c.violate("invariant 1: channel %s has %d keys under channel/ at revision %d: %v", ch, len(keys), rev, sortedKeys(keys))
		}
		c.checkPrepareLocked(ch, rev)
		if !c.registered[ch] {
			continue
		}
		if len(keys) > 0 {
			c.placed[ch] = true
		} else if c.placed[ch] {
			c.violate("invariant 3: registered channel %s lost at revision %d: no key under channel/ (history %v)", ch, rev, c.tailLocked(ch, 4))
			delete(c.placed, ch) // report once per loss
		}
	}
	c.rev = rev
	c.checkPendingLocked()
	close(c.progress)
	c.progress = make(chan struct{})
}

// track folds event e of a key under channel/ or prepare/ (parsed and
// decoded by parse and decode) into keys (channel -> its keys), decoded
// (key -> value) and history (channel -> changes), and returns the key's
// channel ("" for a key that does not parse).
func track(e kv.Event, rev int64, now time.Time, snapshot bool,
	parse func(string) (int64, string, error), decode func(string, []byte) (meta.ChannelInfo, error),
	keys map[string]map[string]bool, decoded map[string]Assignment, history map[string][]KeyChange,
) string {
	key := e.KV.Key
	id, ch, err := parse(key)
	if err != nil {
		return ""
	}
	kc := KeyChange{Rev: rev, Time: now, Key: key, Type: e.Type, NodeID: id}
	if e.Type == kv.EventPut {
		if keys[ch] == nil {
			keys[ch] = make(map[string]bool)
		}
		keys[ch][key] = true
		info, err := decode(key, e.KV.Value)
		kc.Info, kc.Corrupt = info, err != nil
		decoded[key] = Assignment{NodeID: id, Key: key, Info: info, ModRevision: e.KV.ModRevision, Corrupt: err != nil}
	} else {
		delete(keys[ch], key)
		delete(decoded, key)
	}
	if !snapshot || e.Type == kv.EventPut {
		history[ch] = append(history[ch], kc)
	}
	return ch
}

// checkPrepareLocked checks the warm-handoff invariants of ch at rev: at
// most one prepare key, and none on the node that holds the channel's key
// under channel/.
func (c *Checker) checkPrepareLocked(ch string, rev int64) {
	pks := c.prepKeys[ch]
	if len(pks) == 0 {
		return
	}
	if len(pks) > 1 {
		c.violate("prepare: channel %s has %d keys under prepare/ at revision %d: %v", ch, len(pks), rev, sortedKeys(pks))
	}
	for k := range c.chanKeys[ch] {
		owner := c.decoded[k].NodeID
		for pk := range pks {
			if owner != 0 && c.prepDecoded[pk].NodeID == owner {
				c.violate("prepare: channel %s has prepare key %s on its owner (%s) at revision %d", ch, pk, k, rev)
			}
		}
	}
}

// PrepareHistory returns the changes to ch's prepare keys, in order.
func (c *Checker) PrepareHistory(ch string) []KeyChange {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]KeyChange(nil), c.prepHistory[ch]...)
}

func (c *Checker) nodeEventLocked(rev, id int64, e kv.Event) {
	ns := c.nodes[id]
	if e.Type == kv.EventPut {
		info, err := meta.DecodeNodeSession(e.KV.Key, e.KV.Value)
		if err != nil {
			return
		}
		if ns == nil || ns.deleted != 0 {
			ns = &nodeSession{created: rev}
			c.nodes[id] = ns
		}
		ns.info, ns.lease = info, e.KV.Lease
		if info.State == meta.NodeStopping && ns.stopping == 0 {
			ns.stopping = rev
		}
		return
	}
	if ns == nil || ns.deleted != 0 {
		return
	}
	ns.deleted = rev
	if c.rec != nil {
		c.rec.SessionGone(id, rev, ns.info.TTL)
		if c.expectFence[id] {
			for _, iv := range c.rec.OpenOfID(id) {
				if !iv.Stuck {
					c.violate("self-fence: node %d's session ended at revision %d while its handler still ran %s (token %d) on %s",
						id, rev, iv.Channel, iv.Token, iv.Node)
				}
			}
		}
	}
}

func (c *Checker) coordEventLocked(rev int64, e kv.Event) {
	if e.Type == kv.EventPut {
		for _, t := range c.terms {
			if t.create == e.KV.CreateRevision {
				return // seen already (a relist, or a rewrite of the value)
			}
		}
		s, _ := meta.DecodeCoordSession(e.KV.Key, e.KV.Value)
		c.terms = append(c.terms, &coordTerm{id: s.ID, create: e.KV.CreateRevision})
		return
	}
	if e.Type == kv.EventDelete {
		for _, t := range c.terms {
			if t.deleted == 0 {
				t.deleted = rev
			}
		}
	}
}

func (c *Checker) violate(format string, args ...any) {
	c.violations = append(c.violations, fmt.Sprintf(format, args...))
}

func (c *Checker) tailLocked(ch string, n int) []KeyChange {
	h := c.history[ch]
	if len(h) > n {
		h = h[len(h)-n:]
	}
	return append([]KeyChange(nil), h...)
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// NoteCoordWrite records a successful write by coordinator coord guarded by
// token at revision rev; it is checked once the Checker has reached rev.
func (c *Checker) NoteCoordWrite(coord string, token, rev int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pending = append(c.pending, pendingWrite{coord: coord, token: token, rev: rev})
	c.checkPendingLocked()
}

func (c *Checker) checkPendingLocked() {
	kept := c.pending[:0]
	for _, w := range c.pending {
		if w.rev > c.rev {
			kept = append(kept, w)
			continue
		}
		ok := false
		for _, t := range c.terms {
			if t.create == w.token && w.rev >= t.create && (t.deleted == 0 || w.rev <= t.deleted) {
				ok = t.id == w.coord
				break
			}
		}
		if !ok {
			c.violate("fencing: coordinator %s's write at revision %d (token %d) is outside its leadership (terms %s)", w.coord, w.rev, w.token, c.termsLocked())
		}
	}
	c.pending = kept
}

func (c *Checker) termsLocked() string {
	var b strings.Builder
	for _, t := range c.terms {
		fmt.Fprintf(&b, "[%s %d..%d]", t.id, t.create, t.deleted)
	}
	return b.String()
}

// ExpectFence asks the Checker to verify, when node id's session key is
// deleted, that the node's handler runs nothing any more.
func (c *Checker) ExpectFence(id int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expectFence[id] = true
}

// Sync waits until the Checker has seen every revision the store had when
// Sync was called.
func (c *Checker) Sync(ctx context.Context) error {
	_, rev, err := c.b.List(ctx, "\x7f-sync/")
	if err != nil {
		return err
	}
	return c.WaitRev(ctx, rev)
}

// WaitRev waits until the Checker has applied revision rev.
func (c *Checker) WaitRev(ctx context.Context, rev int64) error {
	for {
		c.mu.Lock()
		done, ch := c.rev >= rev, c.progress
		c.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("checker stuck at revision %d, want %d: %w", c.Rev(), rev, ctx.Err())
		}
	}
}

// Rev is the last revision the Checker has applied.
func (c *Checker) Rev() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rev
}

// Violations returns every violation seen so far.
func (c *Checker) Violations() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.violations...)
}

// History returns every change the Checker saw to ch's assignment keys.
func (c *Checker) History(ch string) []KeyChange {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]KeyChange(nil), c.history[ch]...)
}

// Relists counts how often the Checker lost its watch to a compaction.
func (c *Checker) Relists() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.relists
}

// Assignment is one channel's current assignment key, decoded.
type Assignment struct {
	NodeID int64 // 0: remaining
	Key    string
	Info   meta.ChannelInfo
	// ModRevision is the key's mod revision.
	ModRevision int64
	Corrupt     bool
}

// View is a consistent snapshot of the state the Checker follows.
type View struct {
	Rev        int64
	Registered map[string]bool
	// Assign holds the channels that have exactly one parseable key.
	Assign map[string]Assignment
	// Live is the set of node IDs with a session key, with their state.
	Live map[int64]meta.NodeState
	// Leader is the ID of the coordinator holding the leader key ("" if none).
	Leader string
	// BalancePaused reports the control key.
	BalancePaused bool
	// Prepare holds each channel's prepare keys (warm handoff), by key.
	Prepare map[string][]Assignment
}

// View returns a snapshot of the state at the Checker's revision.
func (c *Checker) View() View {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := View{
		Rev:        c.rev,
		Registered: make(map[string]bool, len(c.registered)),
		Assign:     make(map[string]Assignment),
		Live:       make(map[int64]meta.NodeState),
	}
	for ch := range c.registered {
		v.Registered[ch] = true
	}
	for ch, keys := range c.chanKeys {
		if len(keys) != 1 {
			continue
		}
		for k := range keys {
			v.Assign[ch] = c.decoded[k]
		}
	}
	for id, ns := range c.nodes {
		if ns.deleted == 0 {
			v.Live[id] = ns.info.State
		}
	}
	if kvv, ok := c.kvs[meta.CoordinatorKey]; ok {
		s, _ := meta.DecodeCoordSession(kvv.Key, kvv.Value)
		v.Leader = s.ID
	}
	_, v.BalancePaused = c.kvs[meta.BalancePausedKey]
	v.Prepare = make(map[string][]Assignment, len(c.prepKeys))
	for ch, keys := range c.prepKeys {
		for k := range keys {
			v.Prepare[ch] = append(v.Prepare[ch], c.prepDecoded[k])
		}
	}
	return v
}

// SessionEnd returns the revision at which node id's session key was
// deleted (0 while it lives or if it never existed).
func (c *Checker) SessionEnd(id int64) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ns := c.nodes[id]; ns != nil {
		return ns.deleted
	}
	return 0
}

// NodeTTL returns the TTL node id's session value announced.
func (c *Checker) NodeTTL(id int64) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ns := c.nodes[id]; ns != nil {
		return ns.info.TTL
	}
	return 0
}

// Report records a violation found outside the Checker (by a process handle).
func (c *Checker) Report(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.violate(format, args...)
}

// StoppingRev returns the revision at which node id was marked stopping (0
// if never).
func (c *Checker) StoppingRev(id int64) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ns := c.nodes[id]; ns != nil {
		return ns.stopping
	}
	return 0
}

// SessionCreated returns the revision at which node id's session key was
// created (0 if unknown).
func (c *Checker) SessionCreated(id int64) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ns := c.nodes[id]; ns != nil {
		return ns.created
	}
	return 0
}

// Terms returns the coordinator leaderships seen, as "id create..deleted".
func (c *Checker) Terms() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.termsLocked()
}

// TermOf returns the create revision (the fencing token) of coordinator
// id's first leadership, or 0.
func (c *Checker) TermOf(id string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, t := range c.terms {
		if t.id == id {
			return t.create
		}
	}
	return 0
}

// Recorder returns the Recorder the Checker reports session ends to (nil
// if none).
func (c *Checker) Recorder() *Recorder { return c.rec }

// HistoryLen counts every change to an assignment key the Checker has seen.
func (c *Checker) HistoryLen() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, h := range c.history {
		n += len(h)
	}
	return n
}

// LiveLeases returns the leases of the live node sessions and of the
// leader key, as last seen (a test revokes them when it ends).
func (c *Checker) LiveLeases() []kv.LeaseID {
	c.mu.Lock()
	defer c.mu.Unlock()
	var leases []kv.LeaseID
	for _, ns := range c.nodes {
		if ns.deleted == 0 && ns.lease != kv.NoLease {
			leases = append(leases, ns.lease)
		}
	}
	if kvv, ok := c.kvs[meta.CoordinatorKey]; ok && kvv.Lease != kv.NoLease {
		leases = append(leases, kvv.Lease)
	}
	return leases
}
