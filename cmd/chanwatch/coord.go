package main

import (
	"context"
	"errors"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/chanwatch/chanwatch/channelmgr"
	"github.com/chanwatch/chanwatch/session"
)

func newCoordCmd(g *globalFlags) *cobra.Command {
	var (
		httpAddr, id, policy                     string
		ttl, nodeTTL, watchTimeout, releaseTimeo time.Duration
		maxMoves, moveBudget, nodeMoveLimit      int
		moveWindow                               time.Duration
	)
	cmd := &cobra.Command{
		Use:   "coord",
		Short: "Run a coordinator (DataCoord side); several may run, one leads",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			lg, err := g.logger()
			if err != nil {
				return err
			}
			defer lg.Sync() //nolint:errcheck
			var pol channelmgr.Policy
			switch policy {
			case "least-loaded":
				pol = channelmgr.LeastLoaded()
			case "consistent-hash":
				pol = channelmgr.ConsistentHash(64)
			case "weighted":
				pol = channelmgr.Weighted()
			default:
				return usagef("--policy %q: want least-loaded, consistent-hash or weighted", policy)
			}
			if maxMoves <= 0 {
				return usagef("--max-moves must be > 0, got %d", maxMoves)
			}
			ctx := cmd.Context()
			b, reg, closeB, err := g.connectInstrumented(ctx, lg)
			if err != nil {
				return err
			}
			defer closeB()
			opts := []channelmgr.Option{
				channelmgr.WithLogger(lg), channelmgr.WithRegisterer(reg), channelmgr.WithPolicy(pol),
				channelmgr.WithSessionTTL(ttl), channelmgr.WithNodeTTL(nodeTTL), channelmgr.WithWatchTimeout(watchTimeout),
				channelmgr.WithReleaseTimeout(releaseTimeo), channelmgr.WithMaxMovesInFlight(maxMoves),
				channelmgr.WithMoveBudget(moveBudget, moveWindow), channelmgr.WithNodeMoveLimit(nodeMoveLimit),
			}
			if id != "" {
				opts = append(opts, channelmgr.WithID(id))
			}
			coord, err := channelmgr.New(b, opts...)
			if err != nil {
				return usagef("%v", err)
			}
			runCtx, cancel := context.WithCancel(ctx)
			defer cancel()
			term, stopSig := sigterm()
			defer stopSig()
			go func() {
				select {
				case <-term:
					lg.Info("SIGTERM: stepping down")
					cancel()
				case <-runCtx.Done():
				}
			}()
			ready := func() bool {
				if coord.IsLeader() {
					return true
				}
				pctx, c := context.WithTimeout(runCtx, time.Second)
				defer c()
				_, _, err := session.Leader(pctx, b)
				return err == nil
			}
			if _, err := serveHTTP(runCtx, httpAddr, reg, ready, lg); err != nil {
				return err
			}
			lg.Info("coordinator starting", zap.String("id", coord.ID()), zap.String("root", g.root))
			err = coord.Run(runCtx)
			if err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
			lg.Info("coordinator stopped", zap.String("id", coord.ID()))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&httpAddr, "http", "127.0.0.1:0", "address for /metrics, /healthz, /readyz, /debug/pprof (empty: none)")
	f.StringVar(&id, "id", "", "coordinator ID (default: host and pid)")
	f.StringVar(&policy, "policy", "least-loaded", "placement policy: least-loaded, consistent-hash or weighted (by channel weight / node capacity, under labels)")
	f.DurationVar(&ttl, "session-ttl", channelmgr.DefaultSessionTTL, "coordinator session lease TTL")
	f.DurationVar(&nodeTTL, "node-ttl", channelmgr.DefaultNodeTTL, "longest session TTL any node uses (how long a gone node may still run after a takeover)")
	f.DurationVar(&watchTimeout, "watch-timeout", 30*time.Second, "ToWatch without progress for this long is reassigned")
	f.DurationVar(&releaseTimeo, "release-timeout", 30*time.Second, "ToRelease unanswered for this long evicts the node")
	f.IntVar(&maxMoves, "max-moves", 16, "balance moves in flight at most")
	f.IntVar(&moveBudget, "move-budget", 0, "planned moves (drain, balance) started per --move-window at most, cluster-wide (0: no limit; failover is never held)")
	f.DurationVar(&moveWindow, "move-window", time.Minute, "the window of --move-budget")
	f.IntVar(&nodeMoveLimit, "node-move-limit", 0, "planned moves in flight per node at most (0: no limit)")
	return cmd
}
