package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/chanwatch/chanwatch/channelmgr"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/session"
)

// withBackend runs fn with a connected backend and a request deadline.
func withBackend(cmd *cobra.Command, g *globalFlags, fn func(ctx context.Context, b kv.Backend) error) error {
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
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return fn(rctx, b)
}

// adminCheck is what an admin command checks before it writes.
type adminCheck struct {
	// allowEmpty, when set, is the flag that lets the command write to a
	// root that holds no chanwatch data (a typo in --root must not silently
	// create a new root); "" means the flag was given.
	allowEmpty string
}

// withAdmin is withBackend for commands that write: it reads the root
// first, refuses an empty root unless check.allowEmpty is "", and warns on
// stderr, after a successful write, when no coordinator leads.
func withAdmin(cmd *cobra.Command, g *globalFlags, check adminCheck, fn func(ctx context.Context, b kv.Backend, r *statusReport) error) error {
	return withBackend(cmd, g, func(ctx context.Context, b kv.Backend) error {
		r, err := gatherStatus(ctx, b, g.root)
		if err != nil {
			return err
		}
		if r.keys == 0 && check.allowEmpty != "" {
			return fmt.Errorf("root %q holds no chanwatch data: check --root (or pass %s to write there anyway)", g.root, check.allowEmpty)
		}
		if err := fn(ctx, b, r); err != nil {
			return err
		}
		if r.Leader == "" {
			fmt.Fprintf(cmd.ErrOrStderr(), "chanwatch: warning: no coordinator leads root %q: the change is stored, but nothing acts on it until one runs (chanwatch coord)\n", g.root)
		}
		return nil
	})
}

func newRegisterCmd(g *globalFlags) *cobra.Command {
	var (
		collection  int64
		vchannel    string
		create      bool
		ifNotExists bool
		weight      float64
		require     []string
		spread      string
	)
	cmd := &cobra.Command{
		Use:   "register --collection ID CHANNEL...",
		Short: "Register channels, all or nothing (create-only: a channel registers once)",
		Long: "register writes registry/<CHANNEL> for every CHANNEL in one txn: either all are registered or\n" +
			"none is. When they do not fit in one txn of the backend (its MaxTxnOps / MaxTxnBytes), it says so\n" +
			"and uses several; on a failure it names exactly which channels were registered.\n" +
			"The leading coordinator then places each channel on a node.",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("expected at least one CHANNEL")
			}
			seen := map[string]bool{}
			for _, a := range args {
				if err := meta.ValidateChannel(a); err != nil {
					return usagef("%v", err)
				}
				if seen[a] {
					return usagef("channel %q is given twice", a)
				}
				seen[a] = true
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("collection") {
				return usagef("--collection is required: the collection ID the channels belong to")
			}
			if collection < 0 {
				return usagef("--collection must be >= 0, got %d", collection)
			}
			req, err := meta.ParseLabels(require)
			if err != nil {
				return usagef("--require: %v", err)
			}
			if err := meta.ValidateWeight(weight); err != nil {
				return usagef("--weight: %v", err)
			}
			if spread != "" {
				if err := meta.ValidateLabelKey(spread); err != nil {
					return usagef("--spread: %v", err)
				}
			}
			var raw json.RawMessage
			if vchannel != "" {
				if !json.Valid([]byte(vchannel)) {
					return usagef("--vchannel is not valid JSON")
				}
				raw = json.RawMessage(vchannel)
			}
			check := adminCheck{allowEmpty: "--create"}
			if create {
				check.allowEmpty = ""
			}
			return withAdmin(cmd, g, check, func(ctx context.Context, b kv.Backend, r *statusReport) error {
				specs := make([]meta.ChannelSpec, 0, len(args))
				var skipped []string
				existing := map[string]bool{}
				if ifNotExists {
					regs, _, err := b.List(ctx, meta.RegistryPrefix)
					if err != nil {
						return err
					}
					for _, e := range regs {
						if ch, err := meta.ParseRegistryKey(e.Key); err == nil {
							existing[ch] = true
						}
					}
				}
				for _, ch := range args {
					if existing[ch] {
						skipped = append(skipped, ch)
						continue
					}
					specs = append(specs, meta.ChannelSpec{Name: ch, CollectionID: collection, Vchannel: raw,
						Weight: weight, Require: req, Spread: spread})
				}
				out := cmd.OutOrStdout()
				done, batches, err := registerAll(ctx, b, specs, func(n int) {
					fmt.Fprintf(out, "%d channel(s) do not fit in one txn of the backend (MaxTxnOps %d, MaxTxnBytes %d): registering in %d txns, not all or nothing\n",
						len(specs), b.MaxTxnOps(), b.MaxTxnBytes(), n)
				})
				if err != nil {
					if len(done) == 0 {
						return fmt.Errorf("%w; nothing was registered", err)
					}
					return fmt.Errorf("%w; registered before the failure (%d of %d, in %d txn(s)): %s", err, len(done), len(specs), batches, strings.Join(done, " "))
				}
				if len(skipped) > 0 {
					fmt.Fprintf(out, "already registered, left as they are: %s\n", strings.Join(skipped, " "))
				}
				fmt.Fprintf(out, "registered %d channel(s)\n", len(done))
				return nil
			})
		},
	}
	cmd.Flags().Int64Var(&collection, "collection", 0, "collection ID the channels belong to (required)")
	cmd.Flags().StringVar(&vchannel, "vchannel", "", "opaque VchannelInfo JSON handed to the node's handler")
	cmd.Flags().BoolVar(&create, "create", false, "register even though --root holds no chanwatch data yet (a new root)")
	cmd.Flags().BoolVar(&ifNotExists, "if-not-exists", false, "leave channels that are already registered as they are, instead of failing")
	cmd.Flags().Float64Var(&weight, "weight", 0, "load of each channel relative to others, for the weighted policy (0: 1)")
	cmd.Flags().StringArrayVar(&require, "require", nil, "node label key=value a node must carry to take the channels (repeatable; a hard constraint)")
	cmd.Flags().StringVar(&spread, "spread", "", "node label key (e.g. zone) across whose values the collection's channels spread")
	return cmd
}

// registerAll registers specs create-only in as few txns as the backend's
// MaxTxnOps and MaxTxnBytes allow (one, all or nothing, when they fit);
// split is told the number of txns before the first when it is more than
// one. It returns the channels registered, in order, and the txns used.
func registerAll(ctx context.Context, b kv.KV, specs []meta.ChannelSpec, split func(n int)) ([]string, int, error) {
	maxOps, maxBytes := b.MaxTxnOps(), b.MaxTxnBytes()
	var batches []kv.Txn
	var names [][]string
	var cur kv.Txn
	var curNames []string
	for _, spec := range specs {
		n, err := channelmgr.AssignmentBytes(spec)
		if err != nil {
			return nil, 0, err
		}
		if n > maxBytes {
			return nil, 0, fmt.Errorf("%w: %q: its assignment txn would be %d bytes, the backend's MaxTxnBytes is %d",
				channelmgr.ErrValueTooLarge, spec.Name, n, maxBytes)
		}
		val, err := meta.EncodeChannelSpec(spec)
		if err != nil {
			return nil, 0, err
		}
		key := meta.RegistryKey(spec.Name)
		next := kv.Txn{If: append(cur.If[:len(cur.If):len(cur.If)], kv.CmpMissing(key)), Then: append(cur.Then[:len(cur.Then):len(cur.Then)], kv.OpPut(key, val))}
		if len(cur.If) > 0 && (len(next.If) > maxOps || kv.TxnBytes(next) > maxBytes) {
			batches, names = append(batches, cur), append(names, curNames)
			cur, curNames = kv.Txn{If: []kv.Cmp{kv.CmpMissing(key)}, Then: []kv.Op{kv.OpPut(key, val)}}, nil
		} else {
			cur = next
		}
		curNames = append(curNames, spec.Name)
	}
	if len(cur.If) > 0 {
		batches, names = append(batches, cur), append(names, curNames)
	}
	if len(batches) > 1 {
		split(len(batches))
	}
	var done []string
	for i, t := range batches {
		resp, err := b.Txn(ctx, t)
		if err != nil {
			return done, i, fmt.Errorf("register %s: %w (unknown outcome: check with chanwatch status)", strings.Join(names[i], " "), err)
		}
		if !resp.Succeeded {
			var taken []string
			for _, ch := range names[i] {
				if _, _, err := b.Get(ctx, meta.RegistryKey(ch)); err == nil {
					taken = append(taken, ch)
				}
			}
			return done, i, fmt.Errorf("already registered: %s (deregister first, or pass --if-not-exists)", strings.Join(taken, " "))
		}
		done = append(done, names[i]...)
	}
	return done, len(batches), nil
}

func newDeregisterCmd(g *globalFlags) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "deregister CHANNEL...",
		Short: "Deregister channels: each is released on its node, then its assignment deleted",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("expected at least one CHANNEL")
			}
			for _, a := range args {
				if err := meta.ValidateChannel(a); err != nil {
					return usagef("%v", err)
				}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return withAdmin(cmd, g, forceCheck(force), func(ctx context.Context, b kv.Backend, _ *statusReport) error {
				var missing []string
				n := 0
				for _, ch := range args {
					err := channelmgr.Deregister(ctx, b, ch)
					if errors.Is(err, channelmgr.ErrNotRegistered) {
						missing = append(missing, ch)
						continue
					}
					if err != nil {
						return fmt.Errorf("%w (deregistered before it: %d)", err, n)
					}
					n++
					fmt.Fprintf(cmd.OutOrStdout(), "deregistered %s\n", ch)
				}
				if len(missing) > 0 {
					return fmt.Errorf("not registered: %s (see: chanwatch status)", strings.Join(missing, " "))
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "write even though --root holds no chanwatch data")
	return cmd
}

// forceCheck refuses an empty root unless --force.
func forceCheck(force bool) adminCheck {
	if force {
		return adminCheck{}
	}
	return adminCheck{allowEmpty: "--force"}
}

func newDrainCmd(g *globalFlags) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "drain NODE",
		Short: "Mark a node stopping: the coordinator moves its channels away",
		Long: "drain marks NODE stopping; the leading coordinator releases its channels one by one and places\n" +
			"them on other serving nodes. It refuses, unless --force, to drain the last serving node or a\n" +
			"node whose channels would have nowhere to go (every other node stopping or quarantined): they\n" +
			"would wait as remaining.",
		Args: exactArgs(1, "one NODE id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := strconv.ParseInt(args[0], 10, 64)
			if err != nil || id <= 0 {
				return usagef("NODE must be a positive node ID, got %q", args[0])
			}
			return withAdmin(cmd, g, forceCheck(force), func(ctx context.Context, b kv.Backend, r *statusReport) error {
				found, targets := false, 0
				for _, n := range r.Nodes {
					switch {
					case n.ID == id:
						found = true
					case n.State == string(meta.NodeServing) && n.Health != "quarantined":
						targets++
					}
				}
				if !found {
					return fmt.Errorf("node %d has no live session (see: chanwatch status)", id)
				}
				if targets == 0 && !force {
					return fmt.Errorf("node %d is the last serving node that can take channels: its channels would have nowhere to go (pass --force to drain it anyway)", id)
				}
				err := session.Drain(ctx, b, id)
				if errors.Is(err, session.ErrNodeNotFound) {
					return fmt.Errorf("node %d has no live session (see: chanwatch status)", id)
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "node %d marked stopping; the coordinator will move its channels\n", id)
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "drain even the last serving node, or into an empty root")
	return cmd
}

func newPauseCmd(g *globalFlags, pause bool) *cobra.Command {
	use, short := "resume", "Resume balancing"
	if pause {
		use, short = "pause", "Pause balancing (maintenance); failover goes on"
	}
	var force bool
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withAdmin(cmd, g, forceCheck(force), func(ctx context.Context, b kv.Backend, _ *statusReport) error {
				var err error
				if pause {
					err = channelmgr.PauseBalance(ctx, b)
				} else {
					err = channelmgr.ResumeBalance(ctx, b)
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "balancing %sd\n", use)
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "write even though --root holds no chanwatch data")
	return cmd
}

func newUnquarantineCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "unquarantine NODE",
		Short: "Lift a node's quarantine: the coordinator lets it take channels again",
		Long: "unquarantine deletes control/quarantine/NODE. The leading coordinator forgets the node's\n" +
			"failures and places channels on it again; if it keeps failing it is quarantined anew.",
		Args: exactArgs(1, "one NODE id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := strconv.ParseInt(args[0], 10, 64)
			if err != nil || id <= 0 {
				return usagef("NODE must be a positive node ID, got %q", args[0])
			}
			return withBackend(cmd, g, func(ctx context.Context, b kv.Backend) error {
				q, err := channelmgr.Quarantined(ctx, b)
				if err != nil {
					return err
				}
				if _, ok := q[id]; !ok {
					fmt.Fprintf(cmd.OutOrStdout(), "node %d is not quarantined\n", id)
					return nil
				}
				if err := channelmgr.Unquarantine(ctx, b, id); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "node %d: quarantine lifted\n", id)
				return nil
			})
		},
	}
}
