package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/nodewatch"
)

// logHandler is the node daemon's handler: it logs Watch and Release and
// can simulate slow or failing watches for trials.
type logHandler struct {
	lg       *zap.Logger
	delay    time.Duration
	failRate float64
	node     func() int64

	mu      sync.Mutex
	rng     *rand.Rand
	running map[string]int64
	watches prometheus.Counter
	fails   prometheus.Counter
	latency *prometheus.HistogramVec
}

func (h *logHandler) Watch(ctx context.Context, info meta.ChannelInfo) error {
	start := time.Now()
	fields := []zap.Field{zap.String("channel", info.Name), zap.Int64("node", h.node()), zap.Int64("assign_rev", info.AssignRevision)}
	h.lg.Info("watch start", fields...)
	if h.delay > 0 {
		// A slow Watch that is not stuck says so, once a second: without
		// progress reports the coordinator's watch timeout takes it back.
		t := time.NewTimer(h.delay)
		defer t.Stop()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
	wait:
		for {
			select {
			case <-t.C:
				break wait
			case <-tick.C:
				nodewatch.ReportProgress(ctx)
			case <-ctx.Done():
				h.lg.Info("watch cancelled", fields...)
				return ctx.Err()
			}
		}
	}
	h.mu.Lock()
	fail := h.failRate > 0 && h.rng.Float64() < h.failRate
	if !fail {
		h.running[info.Name] = info.AssignRevision
	}
	h.mu.Unlock()
	h.latency.WithLabelValues("watch").Observe(time.Since(start).Seconds())
	h.watches.Inc()
	if fail {
		h.fails.Inc()
		h.lg.Warn("watch failed (simulated)", fields...)
		return fmt.Errorf("simulated watch failure on node %d", h.node())
	}
	h.lg.Info("watch done", fields...)
	return nil
}

func (h *logHandler) Release(_ context.Context, channel string) error {
	start := time.Now()
	h.mu.Lock()
	rev := h.running[channel]
	delete(h.running, channel)
	h.mu.Unlock()
	h.latency.WithLabelValues("release").Observe(time.Since(start).Seconds())
	h.lg.Info("released", zap.String("channel", channel), zap.Int64("node", h.node()), zap.Int64("assign_rev", rev))
	return nil
}

func newNodeCmd(g *globalFlags) *cobra.Command {
	var (
		httpAddr, addr string
		ttl, delay, hb time.Duration
		fenceMargin    time.Duration
		keepAlive      time.Duration
		maxAttempt     time.Duration
		failRate       float64
		drainTimeout   time.Duration
		capacity       float64
		labelFlags     []string
	)
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Run a node agent (DataNode side) whose handler logs Watch and Release",
		Long: "Run a node agent. SIGTERM drains it gracefully (the coordinator moves its channels away,\n" +
			"then it leaves); a second SIGTERM, or SIGINT, exits at once.",
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			lg, err := g.logger()
			if err != nil {
				return err
			}
			defer lg.Sync() //nolint:errcheck
			if failRate < 0 || failRate > 1 {
				return usagef("--fail-rate must be in [0,1], got %v", failRate)
			}
			if delay < 0 {
				return usagef("--watch-delay must be >= 0, got %v", delay)
			}
			opts := []nodewatch.Option{nodewatch.WithLogger(lg), nodewatch.WithSessionTTL(ttl),
				nodewatch.WithFenceMargin(fenceMargin), nodewatch.WithKeepAliveInterval(keepAlive),
				nodewatch.WithMaxAttempt(maxAttempt)}
			if hb > 0 {
				opts = append(opts, nodewatch.WithProgressInterval(hb))
			}
			labels, err := meta.ParseLabels(labelFlags)
			if err != nil {
				return usagef("--label: %v", err)
			}
			if err := meta.ValidateCapacity(capacity); err != nil {
				return usagef("--capacity: %v", err)
			}
			opts = append(opts, nodewatch.WithCapacity(capacity), nodewatch.WithLabels(labels))
			if err := nodewatch.ValidateOptions(opts...); err != nil {
				return usagef("%v", err)
			}
			ctx := cmd.Context()
			b, reg, closeB, err := g.connectInstrumented(ctx, lg)
			if err != nil {
				return err
			}
			defer closeB()
			h := &logHandler{
				lg: lg, delay: delay, failRate: failRate, rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1)),
				running: map[string]int64{},
				watches: prometheus.NewCounter(prometheus.CounterOpts{Name: "chanwatch_node_watches_total", Help: "Handler Watch calls."}),
				fails:   prometheus.NewCounter(prometheus.CounterOpts{Name: "chanwatch_node_watch_failures_total", Help: "Handler Watch failures."}),
				latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "chanwatch_node_handler_seconds", Help: "Time the node's handler took for one call, by call (watch, release)."}, []string{"call"}),
			}
			for _, c := range []string{"watch", "release"} {
				h.latency.WithLabelValues(c)
			}
			reg.MustRegister(h.watches, h.fails, h.latency)
			runCtx, cancel := context.WithCancel(ctx)
			defer cancel()
			// Serve HTTP first: the node advertises the address it listens
			// on (status's ADDR column) unless --addr says otherwise.
			var started atomic.Pointer[nodewatch.Node]
			served, err := serveHTTP(runCtx, httpAddr, reg, func() bool { n := started.Load(); return n != nil && n.ID() != 0 }, lg)
			if err != nil {
				return err
			}
			if addr == "" {
				addr = served
			}
			opts = append(opts, nodewatch.WithAddr(addr), nodewatch.WithRegisterer(reg))
			node, err := nodewatch.New(b, h, opts...)
			if err != nil {
				return usagef("%v", err)
			}
			started.Store(node)
			h.node = node.ID
			term, stopSig := sigterm()
			defer stopSig()
			go func() {
				select {
				case <-term:
				case <-runCtx.Done():
					return
				}
				lg.Info("SIGTERM: draining; send SIGTERM again to exit at once", zap.Int64("node", node.ID()))
				sctx, scancel := context.WithTimeout(runCtx, drainTimeout)
				defer scancel()
				go func() {
					select {
					case <-term:
						lg.Warn("second SIGTERM: exiting now", zap.Int64("node", node.ID()))
						cancel()
					case <-sctx.Done():
					}
				}()
				if err := node.Stop(sctx); err != nil {
					lg.Warn("drain did not finish", zap.Error(err))
					cancel()
				}
			}()
			err = node.Run(runCtx)
			if err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
			lg.Info("node stopped", zap.Int64("node", node.ID()))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&httpAddr, "http", "127.0.0.1:0", "address for /metrics, /healthz, /readyz, /debug/pprof (empty: none)")
	f.StringVar(&addr, "addr", "", "address this node advertises in its session (default: the --http address)")
	f.DurationVar(&ttl, "session-ttl", nodewatch.DefaultSessionTTL, "node session lease TTL")
	f.DurationVar(&hb, "progress-interval", 0, "least time between two progress heartbeats of a channel whose handler reports progress (default: nodewatch's)")
	f.DurationVar(&fenceMargin, "fence-margin", 0, "fence this long before the lease can expire: the time Releases get on session loss (default: session TTL/5)")
	f.DurationVar(&keepAlive, "keep-alive-interval", 0, "renew the session lease this often; interval + fence margin < session TTL (default: session TTL/3)")
	f.DurationVar(&maxAttempt, "max-attempt", nodewatch.DefaultMaxAttempt, "give up one Watch or Release after this long, progress or not (0: no cap)")
	f.DurationVar(&delay, "watch-delay", 0, "simulate a slow Watch taking this long")
	f.Float64Var(&failRate, "fail-rate", 0, "simulate failing Watches with this probability")
	f.DurationVar(&drainTimeout, "drain-timeout", 5*time.Minute, "give up a graceful drain after this long")
	f.Float64Var(&capacity, "capacity", 0, "load this node takes relative to others, in channel weights, for the weighted policy (0: 1)")
	f.StringArrayVar(&labelFlags, "label", nil, "node label key=value (repeatable), e.g. --label zone=a --label group=ingest")
	return cmd
}
