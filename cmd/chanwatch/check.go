package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/chanwatch/chanwatch/audit"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
)

// errUnhealthy is check's exit 1 when an invariant is broken.
var errUnhealthy = errors.New("invariants broken")

func newCheckCmd(g *globalFlags) *cobra.Command {
	var (
		output   string
		follow   bool
		interval time.Duration
		grace    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Audit a live root: report every broken invariant; exit 1 if any",
		Long: "check lists the root once and reports every broken invariant: a channel with two keys,\n" +
			"a registered channel with no assignment, a channel on a node with no live session, a corrupt\n" +
			"value, an assignment for an unregistered channel, a leader key that is missing, corrupt or on\n" +
			"no live lease. It exits 1 if any holds, 0 if the root is healthy. It only reads.\n" +
			"--follow re-lists every --interval and reports a problem that can be transient (a channel\n" +
			"on a gone node, unassigned or unregistered, no leader) only once it has lasted longer than\n" +
			"--grace (default: 3x the largest TTL the live nodes advertise, at least 30s).",
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return usagef("-o %q: want table or json", output)
			}
			if interval <= 0 {
				return usagef("--interval must be > 0, got %v", interval)
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
			if !follow {
				items, rev, err := listRoot(ctx, b)
				if err != nil {
					return err
				}
				if len(items) == 0 {
					return fmt.Errorf("root %q holds no chanwatch data (check --root)", g.root)
				}
				r := audit.Snapshot(items, rev)
				checkLeaderLease(ctx, b, &r)
				return printCheck(out, output, r)
			}
			f := &audit.Follower{Grace: grace}
			tick := time.NewTicker(interval)
			defer tick.Stop()
			var last error
			for {
				items, rev, err := listRoot(ctx, b)
				if err != nil {
					if ctx.Err() != nil {
						return last
					}
					return err
				}
				if grace == 0 {
					f.Grace = max(3*nodeTTL(items), 30*time.Second)
				}
				r := f.Next(items, rev, time.Now())
				checkLeaderLease(ctx, b, &r)
				last = printCheck(out, output, r)
				select {
				case <-ctx.Done():
					return last
				case <-tick.C:
				}
			}
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	cmd.Flags().BoolVar(&follow, "follow", false, "keep checking every --interval until interrupted")
	cmd.Flags().DurationVar(&interval, "interval", 10*time.Second, "with --follow: time between passes")
	cmd.Flags().DurationVar(&grace, "grace", 0, "with --follow: how long a transient problem may last before it is reported (0: 3x the node TTL, at least 30s)")
	return cmd
}

func listRoot(ctx context.Context, b kv.KV) ([]kv.KeyValue, int64, error) {
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	items, rev, err := b.List(rctx, "")
	if err != nil {
		return nil, 0, fmt.Errorf("list the root: %w", err)
	}
	return items, rev, nil
}

// nodeTTL is the largest TTL a node session in items advertises.
func nodeTTL(items []kv.KeyValue) time.Duration {
	var ttl time.Duration
	for _, it := range items {
		if _, err := meta.ParseNodeSessionKey(it.Key); err != nil {
			continue
		}
		if s, err := meta.DecodeNodeSession(it.Key, it.Value); err == nil {
			ttl = max(ttl, s.TTL)
		}
	}
	return ttl
}

// checkLeaderLease adds a problem when the leader key's lease is gone (a
// key outliving its lease is a store fault: the key should have gone too).
func checkLeaderLease(ctx context.Context, b kv.Leaser, r *audit.Report) {
	if r.LeaderLease == kv.NoLease {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := b.TimeToLive(rctx, r.LeaderLease); errors.Is(err, kv.ErrLeaseNotFound) {
		r.Problems = append(r.Problems, audit.Problem{Kind: audit.BadLeader, Key: meta.CoordinatorKey,
			Detail: fmt.Sprintf("leader key %s is on lease %x, which is gone", meta.CoordinatorKey, int64(r.LeaderLease))})
	}
}

func printCheck(out io.Writer, output string, r audit.Report) error {
	if output == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			return err
		}
	} else {
		leader := r.Leader
		if leader == "" {
			leader = "none"
		}
		fmt.Fprintf(out, "revision %d: %d keys, %d channels registered, %d assigned, %d live nodes, leader %s\n",
			r.Revision, r.Keys, r.Registered, r.Assigned, r.LiveNodes, leader)
		if len(r.Problems) > 0 {
			tw := tabwriter.NewWriter(out, 0, 2, 2, ' ', 0)
			fmt.Fprintln(tw, "PROBLEM\tCHANNEL\tDETAIL")
			for _, p := range r.Problems {
				ch := p.Channel
				if ch == "" {
					ch = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\n", p.Kind, ch, p.Detail)
			}
			tw.Flush()
		} else {
			fmt.Fprintln(out, "healthy: every invariant holds")
		}
	}
	if len(r.Problems) > 0 {
		return fmt.Errorf("%w: %d problem(s)", errUnhealthy, len(r.Problems))
	}
	return nil
}
