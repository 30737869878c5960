package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

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
	Stale     bool `json:"stale,omitempty"`
	createRev int64
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
}

// gatherStatus reads the whole root at one revision.
func gatherStatus(ctx context.Context, b kv.Backend, root string) (*statusReport, error) {
	items, rev, err := b.List(ctx, "")
	if err != nil {
		return nil, err
	}
	r := &statusReport{Root: root, Revision: rev, Nodes: []nodeStatus{}, Channels: []channelStatus{}, Remaining: []string{}, Unassigned: []string{}}
	registered := map[string]bool{}
	assigned := map[string]bool{}
	nodes := map[int64]*nodeStatus{}
	leases := map[int64]kv.LeaseID{}
	incarnations := map[int64]int64{} // node ID -> session key create revision
	quarantine := map[int64]meta.Quarantine{}
	now := time.Now()
	for _, it := range items {
		switch {
		case strings.HasPrefix(it.Key, meta.RegistryPrefix):
			if _, err := meta.DecodeChannelSpec(it.Key, it.Value); err != nil {
				r.Corrupt = append(r.Corrupt, it.Key)
				continue
			}
			ch, _ := meta.ParseRegistryKey(it.Key)
			registered[ch] = true
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
			nodes[s.ID] = &nodeStatus{ID: s.ID, Addr: s.Addr, State: state}
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
		r.Channels[i].Registered = registered[r.Channels[i].Name]
		if n := nodes[r.Channels[i].Node]; n != nil {
			n.Channels++
			r.Channels[i].Stale = r.Channels[i].createRev < incarnations[n.ID]
		}
	}
	for ch := range registered {
		if !assigned[ch] {
			r.Unassigned = append(r.Unassigned, ch)
		}
	}
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
	return r, nil
}

func printStatusTable(w io.Writer, r *statusReport) {
	leader := r.Leader
	if leader == "" {
		leader = "none"
	}
	fmt.Fprintf(w, "root %s  revision %d  leader %s  balancing %s\n", r.Root, r.Revision, leader, map[bool]string{true: "PAUSED", false: "on"}[r.BalancePaused])
	tw := tabwriter.NewWriter(w, 0, 2, 2, ' ', 0)
	fmt.Fprintln(tw, "\nNODE\tADDR\tSTATE\tHEALTH\tCHANNELS\tLEASE TTL LEFT")
	var quarantined []nodeStatus
	for _, n := range r.Nodes {
		health := n.Health
		if n.QuarantinedUntil != nil {
			health += " until " + n.QuarantinedUntil.Local().Format(time.TimeOnly)
			quarantined = append(quarantined, n)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%.1fs\n", n.ID, orDash(n.Addr), n.State, health, n.Channels, n.LeaseTTLSec)
	}
	fmt.Fprintln(tw, "\nCHANNEL\tCOLLECTION\tOWNER\tSTATE\tAGE\tATTEMPTS\tLAST ERROR")
	for _, c := range r.Channels {
		owner := fmt.Sprint(c.Node)
		if c.Node == 0 {
			owner = "remaining"
		}
		if !c.Registered {
			owner += " (deregistered)"
		}
		if c.Stale {
			owner += " (stale: predates the node's session)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%.1fs\t%d\t%s\n", c.Name, c.Collection, owner, c.State, c.AgeSec, c.Attempts, orDash(c.LastError))
	}
	tw.Flush()
	fmt.Fprintf(w, "\n%d node(s), %d channel(s), %d remaining, %d registered but unassigned\n",
		len(r.Nodes), len(r.Channels), len(r.Remaining), len(r.Unassigned))
	for _, n := range quarantined {
		fmt.Fprintf(w, "node %d %s: %s (lift: chanwatch unquarantine %d)\n", n.ID, n.Health, n.QuarantineReason, n.ID)
	}
	if len(r.Corrupt) > 0 {
		fmt.Fprintf(w, "%d corrupt key(s): %s\n", len(r.Corrupt), strings.Join(r.Corrupt, ", "))
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

func newStatusCmd(g *globalFlags) *cobra.Command {
	var output string
	var watch bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show nodes, channel owners and states, and remaining channels",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return usagef("-o %q: want table or json", output)
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
			show := func() (int64, error) {
				rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				r, err := gatherStatus(rctx, b, g.root)
				if err != nil {
					return 0, err
				}
				if !watch && len(r.Nodes) == 0 && len(r.Channels) == 0 && len(r.Unassigned) == 0 && r.Leader == "" {
					return 0, fmt.Errorf("root %q holds no chanwatch data (check --root)", g.root)
				}
				if output == "json" {
					enc := json.NewEncoder(out)
					enc.SetIndent("", "  ")
					return r.Revision, enc.Encode(r)
				}
				if watch && isTerminal(os.Stdout) {
					fmt.Fprint(out, "\033[H\033[2J")
				}
				printStatusTable(out, r)
				return r.Revision, nil
			}
			rev, err := show()
			if err != nil || !watch {
				return err
			}
			for {
				wctx, cancel := context.WithCancel(ctx)
				for resp := range b.Watch(wctx, "", rev+1) {
					if resp.Err != nil {
						break
					}
					if rev, err = show(); err != nil {
						cancel()
						return err
					}
				}
				cancel()
				if ctx.Err() != nil {
					return nil
				}
				// The watch ended (compaction, reconnect): re-list and go on.
				if rev, err = show(); err != nil {
					return err
				}
			}
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	cmd.Flags().BoolVar(&watch, "watch", false, "redraw on every change")
	return cmd
}
