package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/mattn/go-runewidth"
	"github.com/spf13/cobra"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
)

type nodeStatus struct {
	ID          int64   `json:"id"`
	Addr        string  `json:"addr,omitempty"`
	State       string  `json:"state"`
	Channels    int     `json:"channels"`
	LeaseTTLSec float64 `json:"lease_ttl_left_s"`
	// Health is "ok", "quarantined" (no new work until QuarantinedUntil)
	// or "probing" (its quarantine ran out: one channel at a time until a
	// success), as the leader published it.
	Health           string     `json:"health"`
	QuarantinedUntil *time.Time `json:"quarantined_until,omitempty"`
	QuarantineReason string     `json:"quarantine_reason,omitempty"`
	// On a stopping node: Moving is its channels being released
	// (ToRelease, Released), Waiting those that have not started their
	// move yet (held by the coordinator's move budget, or not reached yet).
	Moving  int `json:"moves_in_flight,omitempty"`
	Waiting int `json:"moves_waiting,omitempty"`
	// StopReason is why a stopping node stops: "drain" (an operator's:
	// chanwatch undrain puts it back) or "shutdown" (its own process).
	StopReason string `json:"stop_reason,omitempty"`
	// Prepare: the node's handler can prepare channels (warm handoff);
	// Preparing counts the prepare requests it holds now.
	Prepare   bool `json:"prepare,omitempty"`
	Preparing int  `json:"preparing,omitempty"`
	placementStatus
}

// prepareWords says what a prepare state means in the status table.
var prepareWords = map[string]string{
	meta.ToPrepare.String():      "preparing",
	meta.Prepared.String():       "prepared",
	meta.PrepareFailure.String(): "prepare failed",
}

// prepareStatus is a channel's warm-handoff request: prepare/<node>/<channel>.
type prepareStatus struct {
	Node      int64   `json:"node"`
	State     string  `json:"state"` // ToPrepare (preparing), Prepared, PrepareFailure
	AgeSec    float64 `json:"age_in_state_s"`
	LastError string  `json:"last_error,omitempty"`
}

type channelStatus struct {
	Name       string  `json:"name"`
	Collection int64   `json:"collection_id"`
	Node       int64   `json:"node"` // 0: remaining
	State      string  `json:"state"`
	AgeSec     float64 `json:"age_in_state_s"`
	Attempts   int     `json:"attempts"`
	LastError  string  `json:"last_error,omitempty"`
	AssignRev  int64   `json:"assign_rev,omitempty"`
	Registered bool    `json:"registered"`
	// Stale: the key was created before its node's current session key: it
	// was made for an earlier holder of the node ID (a dead node's key,
	// which the coordinator moves and the node does not run).
	Stale bool `json:"stale,omitempty"`
	// OwnerGone: the key names a node that has no session key (it died or
	// left and the coordinator has not moved the channel yet, or no
	// coordinator leads to move it). Nothing runs the channel.
	OwnerGone bool `json:"owner_gone,omitempty"`
	// RegistryCorrupt: the channel's registry value does not decode (it is
	// registered, but the coordinator cannot read its spec).
	RegistryCorrupt bool `json:"registry_corrupt,omitempty"`
	// Prepare is the channel's warm-handoff request, while one exists: the
	// node it moves to prepares it (ToPrepare) or is ready (Prepared).
	Prepare   *prepareStatus `json:"prepare,omitempty"`
	createRev int64
	channelPlacement
}

type statusReport struct {
	Root          string          `json:"root"`
	Revision      int64           `json:"revision"`
	Leader        string          `json:"leader,omitempty"`
	LeaderToken   int64           `json:"leader_token,omitempty"`
	BalancePaused bool            `json:"balance_paused"`
	Nodes         []nodeStatus    `json:"nodes"`
	Channels      []channelStatus `json:"channels"`
	Remaining     []string        `json:"remaining"`
	Unassigned    []string        `json:"unassigned"`
	Corrupt       []string        `json:"corrupt,omitempty"`
	// OwnerGone lists channels whose assignment names a node with no session.
	OwnerGone []string `json:"owner_gone"`
	// Problems says, one sentence each, what an operator should look at;
	// status exits 1 when it is not empty (unless --exit-zero).
	Problems []string `json:"problems"`
	keys     int      // keys under the root: 0 means no chanwatch data there
}

// gatherStatus reads the whole root at one revision.
func gatherStatus(ctx context.Context, b kv.Backend, root string) (*statusReport, error) {
	items, rev, err := b.List(ctx, "")
	if err != nil {
		return nil, err
	}
	r := &statusReport{Root: root, Revision: rev, Nodes: []nodeStatus{}, Channels: []channelStatus{}, Remaining: []string{},
		Unassigned: []string{}, OwnerGone: []string{}, Problems: []string{}, keys: len(items)}
	registered := map[string]bool{}
	corruptSpec := map[string]bool{}
	assigned := map[string]bool{}
	nodes := map[int64]*nodeStatus{}
	leases := map[int64]kv.LeaseID{}
	incarnations := map[int64]int64{} // node ID -> session key create revision
	quarantine := map[int64]meta.Quarantine{}
	specs := map[string]meta.ChannelSpec{}
	prepares := map[string]*prepareStatus{}
	loads := map[int64]map[string]float64{} // load/<id>: measured loads
	now := time.Now()
	for _, it := range items {
		switch {
		case strings.HasPrefix(it.Key, meta.RegistryPrefix):
			ch, err := meta.ParseRegistryKey(it.Key)
			if err != nil {
				r.Corrupt = append(r.Corrupt, it.Key)
				continue
			}
			registered[ch] = true
			if spec, err := meta.DecodeChannelSpec(it.Key, it.Value); err != nil {
				r.Corrupt = append(r.Corrupt, it.Key)
				corruptSpec[ch] = true
			} else {
				specs[ch] = spec
			}
		case strings.HasPrefix(it.Key, meta.NodeSessionPrefix):
			s, err := meta.DecodeNodeSession(it.Key, it.Value)
			if err != nil {
				r.Corrupt = append(r.Corrupt, it.Key)
				continue
			}
			state := string(s.State)
			if s.State == meta.NodeEvicted {
				state = fmt.Sprintf("evicted by token %d: %s", s.EvictedBy, s.EvictReason)
			}
			nodes[s.ID] = &nodeStatus{ID: s.ID, Addr: s.Addr, State: state, Prepare: s.Prepare, placementStatus: nodePlacement(s)}
			if s.State == meta.NodeStopping {
				nodes[s.ID].StopReason = cmp.Or(s.StopReason, meta.StopDrain)
			}
			leases[s.ID] = it.Lease
			incarnations[s.ID] = it.CreateRevision
		case it.Key == meta.CoordinatorKey:
			c, err := meta.DecodeCoordSession(it.Key, it.Value)
			switch {
			case err != nil:
				r.Corrupt = append(r.Corrupt, it.Key+" (the leader key: its holder repairs it, or a standby deletes it after one session TTL)")
			case it.Lease == kv.NoLease:
				r.Corrupt = append(r.Corrupt, it.Key+" (the leader key is on no lease: a standby deletes it after one session TTL)")
			default:
				r.Leader, r.LeaderToken = c.ID, it.CreateRevision
			}
		case it.Key == meta.BalancePausedKey:
			r.BalancePaused = true
		case strings.HasPrefix(it.Key, meta.LoadPrefix):
			if rep, err := meta.DecodeLoadReport(it.Key, it.Value); err != nil {
				r.Corrupt = append(r.Corrupt, it.Key)
			} else {
				loads[rep.Node] = rep.Loads
			}
		case strings.HasPrefix(it.Key, meta.QuarantinePrefix):
			id, err := meta.ParseQuarantineKey(it.Key)
			if err != nil {
				r.Corrupt = append(r.Corrupt, it.Key)
				continue
			}
			q, err := meta.DecodeQuarantine(it.Key, it.Value)
			if err != nil {
				r.Corrupt = append(r.Corrupt, it.Key)
				q = meta.Quarantine{Node: id, Reason: "corrupt quarantine key"}
			}
			quarantine[id] = q
		case strings.HasPrefix(it.Key, meta.PreparePrefix):
			id, ch, err := meta.ParsePrepareKey(it.Key)
			if err != nil {
				r.Corrupt = append(r.Corrupt, it.Key)
				continue
			}
			info, err := meta.DecodePrepareInfo(it.Key, it.Value)
			if err != nil {
				r.Corrupt = append(r.Corrupt, it.Key)
				continue
			}
			ps := &prepareStatus{Node: id, State: info.State.String(), LastError: info.LastError}
			if !info.StartTime.IsZero() {
				ps.AgeSec = now.Sub(info.StartTime).Round(100 * time.Millisecond).Seconds()
			}
			prepares[ch] = ps
		case strings.HasPrefix(it.Key, meta.ChannelPrefix):
			id, ch, err := meta.ParseChannelKey(it.Key)
			if err != nil {
				r.Corrupt = append(r.Corrupt, it.Key)
				continue
			}
			info, err := meta.DecodeChannelInfo(it.Key, it.Value)
			if err != nil {
				r.Corrupt = append(r.Corrupt, it.Key)
				continue
			}
			assigned[ch] = true
			cs := channelStatus{Name: ch, Collection: info.CollectionID, Node: id, State: info.State.String(),
				Attempts: info.Attempts, LastError: info.LastError, AssignRev: info.AssignRevision, createRev: it.CreateRevision}
			if !info.StartTime.IsZero() {
				cs.AgeSec = now.Sub(info.StartTime).Round(100 * time.Millisecond).Seconds()
			}
			r.Channels = append(r.Channels, cs)
			if id == 0 {
				r.Remaining = append(r.Remaining, ch)
			}
		}
	}
	for i := range r.Channels {
		c := &r.Channels[i]
		c.Prepare = prepares[c.Name]
		if c.Prepare != nil && nodes[c.Prepare.Node] != nil {
			nodes[c.Prepare.Node].Preparing++
		}
		c.Registered = registered[c.Name]
		c.RegistryCorrupt = corruptSpec[c.Name]
		if n := nodes[c.Node]; n != nil {
			n.Channels++
			c.Stale = c.createRev < incarnations[n.ID]
			if n.StopReason != "" && c.Registered && !c.Stale {
				switch c.State {
				case meta.ToRelease.String(), meta.Released.String():
					n.Moving++
				case meta.Watched.String(), meta.ToWatch.String():
					n.Waiting++
				}
			}
		} else if c.Node != 0 {
			c.OwnerGone = true
			r.OwnerGone = append(r.OwnerGone, c.Name)
		}
	}
	addPlacement(r, nodes, specs, loads)
	for ch := range registered {
		if !assigned[ch] {
			r.Unassigned = append(r.Unassigned, ch)
		}
	}
	sort.Strings(r.OwnerGone)
	for id, n := range nodes {
		n.Health = "ok"
		if q, ok := quarantine[id]; ok {
			// The leader's clock may differ from ours; until is its word.
			n.Health = "quarantined"
			if !q.Until.IsZero() && !now.Before(q.Until) {
				n.Health = "probing"
			}
			until := q.Until
			n.QuarantinedUntil, n.QuarantineReason = &until, q.Reason
		}
		if ttl, err := b.TimeToLive(ctx, leases[id]); err == nil {
			n.LeaseTTLSec = ttl.Round(100 * time.Millisecond).Seconds()
		}
		r.Nodes = append(r.Nodes, *n)
	}
	sort.Slice(r.Nodes, func(i, j int) bool { return r.Nodes[i].ID < r.Nodes[j].ID })
	sort.Slice(r.Channels, func(i, j int) bool {
		if r.Channels[i].Node != r.Channels[j].Node {
			return r.Channels[i].Node < r.Channels[j].Node
		}
		return r.Channels[i].Name < r.Channels[j].Name
	})
	sort.Strings(r.Unassigned)
	r.Problems = problems(r)
	return r, nil
}

// problems names what is wrong in r, one sentence each. Quarantined and
// evicted nodes are shown in the table but are not problems of their own:
// the coordinator is already handling them.
func problems(r *statusReport) []string {
	p := []string{}
	if r.Leader == "" {
		p = append(p, "no coordinator leads: nothing places, moves or releases channels (start chanwatch coord)")
	}
	if n := len(r.OwnerGone); n > 0 {
		p = append(p, fmt.Sprintf("%d channel(s) owned by a node with no live session: nothing runs them (%s)", n, abbrev(r.OwnerGone)))
	}
	if n := len(r.Unassigned); n > 0 {
		p = append(p, fmt.Sprintf("%d channel(s) registered but unassigned: the coordinator has not placed them (%s)", n, abbrev(r.Unassigned)))
	}
	if n := len(r.Corrupt); n > 0 {
		p = append(p, fmt.Sprintf("%d corrupt key(s)", n))
	}
	return append(p, waitingProblems(r)...)
}

// abbrev joins the first few names of list.
func abbrev(list []string) string {
	const show = 3
	if len(list) <= show {
		return strings.Join(list, ", ")
	}
	return strings.Join(list[:show], ", ") + fmt.Sprintf(", and %d more", len(list)-show)
}

// statusFilter narrows the table and the JSON to some nodes and channels;
// the summary lines and problems always count the whole root.
type statusFilter struct {
	node       int64 // -1: any; 0: remaining
	state      string
	collection int64 // -1: any
	summary    bool  // no channel table
}

func (f statusFilter) channel(c channelStatus) bool {
	return (f.node < 0 || c.Node == f.node) &&
		(f.state == "" || strings.EqualFold(c.State, f.state)) &&
		(f.collection < 0 || c.Collection == f.collection)
}

func (f statusFilter) apply(r *statusReport) *statusReport {
	out := *r
	out.Nodes = []nodeStatus{}
	for _, n := range r.Nodes {
		if f.node < 0 || n.ID == f.node {
			out.Nodes = append(out.Nodes, n)
		}
	}
	out.Channels = []channelStatus{}
	if !f.summary {
		for _, c := range r.Channels {
			if f.channel(c) {
				out.Channels = append(out.Channels, c)
			}
		}
	}
	return &out
}

func printStatusTable(w io.Writer, r *statusReport, f statusFilter) {
	leader := r.Leader
	if leader == "" {
		leader = "NONE"
	}
	fmt.Fprintf(w, "root %s  revision %d  leader %s  balancing %s\n", r.Root, r.Revision, leader, map[bool]string{true: "PAUSED", false: "on"}[r.BalancePaused])
	shown := f.apply(r)
	addr := false
	for _, n := range shown.Nodes {
		addr = addr || n.Addr != ""
	}
	nodes := [][]string{{"NODE", "ADDR", "STATE", "HEALTH", "CHANNELS", "LEASE TTL LEFT"}}
	var quarantined []nodeStatus
	for _, n := range shown.Nodes {
		health := n.Health
		if n.QuarantinedUntil != nil {
			health += " until " + n.QuarantinedUntil.Local().Format(time.TimeOnly)
			quarantined = append(quarantined, n)
		}
		state := n.State
		if n.StopReason != "" {
			state += " (" + n.StopReason + ")"
		}
		nodes = append(nodes, []string{fmt.Sprint(n.ID), orDash(n.Addr), state, health, fmt.Sprint(n.Channels), fmt.Sprintf("%.1fs", n.LeaseTTLSec)})
	}
	nodes = nodePlacementColumns(nodes, shown)
	if !addr { // no node serves HTTP: the column would be all dashes
		for i := range nodes {
			nodes[i] = append(nodes[i][:1:1], nodes[i][2:]...)
		}
	}
	fmt.Fprintln(w)
	writeTable(w, nodes)
	if !f.summary {
		chans := [][]string{{"CHANNEL", "COLLECTION", "OWNER", "STATE", "AGE", "ATTEMPTS", "LAST ERROR"}}
		for _, c := range shown.Channels {
			owner, state := fmt.Sprint(c.Node), c.State
			switch {
			case c.Node == 0:
				owner = "remaining"
			case c.OwnerGone:
				owner += " (gone)"
				state += " (owner gone)"
			}
			switch {
			case c.RegistryCorrupt:
				owner += " (registry value corrupt)"
			case !c.Registered:
				owner += " (deregistered)"
			}
			if c.Stale {
				owner += " (stale: predates the node's session)"
			}
			if pr := c.Prepare; pr != nil {
				state += fmt.Sprintf(" (%s on %d for %.1fs)", prepareWords[pr.State], pr.Node, pr.AgeSec)
			}
			chans = append(chans, []string{c.Name, fmt.Sprint(c.Collection), owner, state, fmt.Sprintf("%.1fs", c.AgeSec), fmt.Sprint(c.Attempts), orDash(c.LastError)})
		}
		chans = channelPlacementColumns(chans, shown)
		fmt.Fprintln(w)
		writeTable(w, chans)
	}
	fmt.Fprintf(w, "\n%d node(s), %d channel(s), %d remaining, %d owned by a gone node, %d registered but unassigned\n",
		len(r.Nodes), len(r.Channels), len(r.Remaining), len(r.OwnerGone), len(r.Unassigned))
	for _, n := range quarantined {
		fmt.Fprintf(w, "node %d %s: %s (lift: chanwatch unquarantine %d)\n", n.ID, n.Health, n.QuarantineReason, n.ID)
	}
	for _, n := range shown.Nodes {
		if n.Moving+n.Waiting > 0 {
			fmt.Fprintf(w, "node %d stopping (%s): %d move(s) in flight, %d channel(s) waiting to move (queued by the move budget, or not reached yet)\n",
				n.ID, n.StopReason, n.Moving, n.Waiting)
		}
	}
	if len(r.Corrupt) > 0 {
		fmt.Fprintf(w, "%d corrupt key(s): %s\n", len(r.Corrupt), strings.Join(r.Corrupt, ", "))
	}
	for _, p := range r.Problems {
		fmt.Fprintf(w, "PROBLEM: %s\n", p)
	}
}

// writeTable pads columns by display width (text/tabwriter counts runes, so
// a wide or combining character in a channel name would shift the columns).
func writeTable(w io.Writer, rows [][]string) {
	var widths []int
	for _, row := range rows {
		for i, cell := range row {
			if i >= len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], runewidth.StringWidth(cell))
		}
	}
	var b strings.Builder
	for _, row := range rows {
		b.Reset()
		for i, cell := range row {
			b.WriteString(cell)
			if i < len(row)-1 {
				b.WriteString(strings.Repeat(" ", widths[i]-runewidth.StringWidth(cell)+2))
			}
		}
		fmt.Fprintln(w, b.String())
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

const statusLong = `status reads the whole root at one revision and shows the nodes, every
channel's owner and state, and what is wrong.

Terms:
  remaining                   the channel waits in channel/remaining/ for a serving node
                              (none can take it: no node, all draining or quarantined)
  registered but unassigned   registry/<ch> exists but the coordinator has not written its
                              assignment yet (no coordinator leads, or it has not caught up)
  owner gone                  the assignment names a node with no live session: nothing runs
                              the channel until the coordinator moves it
  stale                       the assignment predates its node's session (made for an earlier
                              holder of the node ID); the coordinator moves it
  deregistered                assigned but no longer registered: the coordinator releases it

status exits 1 when it sees a problem (no leader, channels owned by a gone node, channels
registered but unassigned, corrupt keys) and lists them as PROBLEM lines; --exit-zero exits 0
whatever it sees. Quarantined and evicted nodes are shown, not counted as problems.
--watch redraws every second and on changes, and never exits on a problem.`

func newStatusCmd(g *globalFlags) *cobra.Command {
	var (
		output   string
		watch    bool
		exitZero bool
		f        = statusFilter{node: -1, collection: -1}
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show nodes, channel owners and states, remaining channels and problems",
		Long:  statusLong,
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return usagef("-o %q: want table or json", output)
			}
			if f.node < -1 || f.collection < -1 {
				return usagef("--node and --collection take an ID >= 0")
			}
			lg, err := g.logger()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			b, closeB, err := g.connect(ctx, lg)
			if err != nil {
				return err
			}
			defer closeB()
			out := cmd.OutOrStdout()
			show := func() (*statusReport, error) {
				rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				r, err := gatherStatus(rctx, b, g.root)
				if err != nil {
					return nil, err
				}
				if !watch && len(r.Nodes) == 0 && len(r.Channels) == 0 && len(r.Unassigned) == 0 && r.Leader == "" {
					return nil, fmt.Errorf("root %q holds no chanwatch data (check --root)", g.root)
				}
				if output == "json" {
					enc := json.NewEncoder(out)
					enc.SetIndent("", "  ")
					return r, enc.Encode(f.apply(r))
				}
				if watch && isTerminal(os.Stdout) {
					fmt.Fprint(out, "\033[H\033[2J")
				}
				printStatusTable(out, r, f)
				return r, nil
			}
			if !watch {
				r, err := show()
				if err != nil {
					return err
				}
				if len(r.Problems) > 0 && !exitZero {
					return fmt.Errorf("status found %d problem(s): %s (--exit-zero to ignore)", len(r.Problems), strings.Join(r.Problems, "; "))
				}
				return nil
			}
			return watchStatus(ctx, b, out, show)
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&output, "output", "o", "table", "output format: table or json")
	fl.BoolVar(&watch, "watch", false, "redraw every second and on changes (bursts coalesced); never exits on a problem")
	fl.BoolVar(&exitZero, "exit-zero", false, "exit 0 even when status finds a problem (for scripts that only want the table)")
	fl.Int64Var(&f.node, "node", -1, "show only this node and its channels (0: remaining channels)")
	fl.StringVar(&f.state, "state", "", "show only channels in this state (ToWatch, Watched, WatchFailure, ToRelease, Released, ReleaseFailure)")
	fl.Int64Var(&f.collection, "collection", -1, "show only channels of this collection ID")
	fl.BoolVar(&f.summary, "summary", false, "nodes and counts only, no channel table")
	return cmd
}

// watchStatus redraws on a one-second timer (ages and lease time left tick)
// and soon after changes, one redraw per burst. A failed read is shown and
// retried: --watch keeps running until interrupted.
func watchStatus(ctx context.Context, b kv.Backend, out io.Writer, show func() (*statusReport, error)) error {
	const settle = 100 * time.Millisecond
	rev := int64(0)
	redraw := func() {
		r, err := show()
		if err != nil {
			fmt.Fprintf(out, "status: %v (retrying)\n", err)
			return
		}
		rev = r.Revision
	}
	redraw()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(ctx)
		wch := b.Watch(wctx, "", rev+1)
		var soon <-chan time.Time
	events:
		for {
			select {
			case <-ctx.Done():
				break events
			case resp, ok := <-wch:
				if !ok || resp.Err != nil {
					break events // compaction, reconnect: re-list and watch again
				}
				if soon == nil {
					soon = time.After(settle)
				}
			case <-soon:
				soon = nil
				redraw()
			case <-tick.C:
				redraw()
			}
		}
		cancel()
		if ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-tick.C:
				redraw()
			}
		}
	}
	return nil
}
