package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/chanwatch/chanwatch/channelmgr"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/session"
)

// nodeArg parses a NODE argument.
func nodeArg(s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, usagef("NODE must be a positive node ID, got %q", s)
	}
	return id, nil
}

func newUndrainCmd(g *globalFlags) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "undrain NODE",
		Short: "Put a node an operator drained back to serving: the coordinator places channels on it again",
		Long: "undrain marks NODE serving again (session.Undrain: a compare-and-swap on its session key that\n" +
			"keeps its lease, so it applies to the same session only). The coordinator stops moving channels\n" +
			"off it and may place or balance channels onto it. It refuses a node that is stopping because its\n" +
			"own process is shutting down, an evicted node and an unknown one.",
		Args: exactArgs(1, "one NODE id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := nodeArg(args[0])
			if err != nil {
				return err
			}
			return withAdmin(cmd, g, forceCheck(force), func(ctx context.Context, b kv.Backend, _ *statusReport) error {
				err := session.Undrain(ctx, b, id)
				switch {
				case errors.Is(err, session.ErrNodeNotFound):
					return fmt.Errorf("node %d has no live session (see: chanwatch status)", id)
				case errors.Is(err, session.ErrNodeShuttingDown):
					return fmt.Errorf("node %d is shutting down (its own process asked to stop), not drained by an operator: start a new node instead", id)
				case errors.Is(err, session.ErrNodeEvicted):
					return fmt.Errorf("node %d was evicted by the coordinator: it is fencing itself and will register again under a new ID", id)
				case err != nil:
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "node %d is serving\n", id)
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "write even though --root holds no chanwatch data")
	return cmd
}

func newMayStopCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "may-stop NODE",
		Short: "Say whether NODE may be stopped now without leaving a channel without a running owner (exit 0 yes, 1 no)",
		Long: "may-stop reads the root once (channelmgr.MayStop) and exits 0 when stopping NODE now leaves every\n" +
			"channel with a running owner apart from NODE's own handoffs: every registered channel is Watched on\n" +
			"a live serving node (none moving, waiting, remaining or on a stopping node), NODE is not still\n" +
			"draining, and another serving node can take its channels. Otherwise it exits 1 with the reason.\n" +
			"Gate each step of a rolling restart on it.",
		Args: exactArgs(1, "one NODE id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := nodeArg(args[0])
			if err != nil {
				return err
			}
			return withBackend(cmd, g, func(ctx context.Context, b kv.Backend) error {
				c, err := channelmgr.MayStop(ctx, b, id)
				if errors.Is(err, session.ErrNodeNotFound) {
					return fmt.Errorf("node %d has no live session (see: chanwatch status)", id)
				}
				if err != nil {
					return err
				}
				if !c.OK {
					return fmt.Errorf("node %d may not stop now: %s", id, c.Reason)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "node %d may stop: %d channels to move, %d other serving nodes to take them, every channel running (revision %d)\n",
					id, c.Channels, c.Targets, c.Revision)
				return nil
			})
		},
	}
}
