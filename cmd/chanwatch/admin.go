package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
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

func newRegisterCmd(g *globalFlags) *cobra.Command {
	var collection int64
	var vchannel string
	cmd := &cobra.Command{
		Use:   "register CHANNEL...",
		Short: "Register channels (create-only: a channel registers once)",
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
			if collection < 0 {
				return usagef("--collection must be >= 0, got %d", collection)
			}
			var raw json.RawMessage
			if vchannel != "" {
				if !json.Valid([]byte(vchannel)) {
					return usagef("--vchannel is not valid JSON")
				}
				raw = json.RawMessage(vchannel)
			}
			return withBackend(cmd, g, func(ctx context.Context, b kv.Backend) error {
				for _, ch := range args {
					err := channelmgr.Register(ctx, b, meta.ChannelSpec{Name: ch, CollectionID: collection, Vchannel: raw})
					if errors.Is(err, channelmgr.ErrAlreadyRegistered) {
						return fmt.Errorf("channel %q is already registered (deregister it first to re-create it)", ch)
					}
					if err != nil {
						return fmt.Errorf("register %q: %w", ch, err)
					}
				}
				fmt.Fprintf(cmd.OutOrStdout(), "registered %d channel(s)\n", len(args))
				return nil
			})
		},
	}
	cmd.Flags().Int64Var(&collection, "collection", 0, "collection ID the channel belongs to")
	cmd.Flags().StringVar(&vchannel, "vchannel", "", "opaque VchannelInfo JSON handed to the node's handler")
	return cmd
}

func newDeregisterCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "deregister CHANNEL",
		Short: "Deregister a channel: it is released on its node, then its assignment deleted",
		Args:  exactArgs(1, "one CHANNEL"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withBackend(cmd, g, func(ctx context.Context, b kv.Backend) error {
				err := channelmgr.Deregister(ctx, b, args[0])
				if errors.Is(err, channelmgr.ErrNotRegistered) {
					return fmt.Errorf("channel %q is not registered (see: chanwatch status)", args[0])
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "deregistered %s\n", args[0])
				return nil
			})
		},
	}
}

func newDrainCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "drain NODE",
		Short: "Mark a node stopping: the coordinator moves its channels away",
		Args:  exactArgs(1, "one NODE id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := strconv.ParseInt(args[0], 10, 64)
			if err != nil || id <= 0 {
				return usagef("NODE must be a positive node ID, got %q", args[0])
			}
			return withBackend(cmd, g, func(ctx context.Context, b kv.Backend) error {
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
}

func newPauseCmd(g *globalFlags, pause bool) *cobra.Command {
	use, short := "resume", "Resume balancing"
	if pause {
		use, short = "pause", "Pause balancing (maintenance); failover goes on"
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withBackend(cmd, g, func(ctx context.Context, b kv.Backend) error {
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
