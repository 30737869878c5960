package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/chanwatch/chanwatch/audit"
	"github.com/chanwatch/chanwatch/bench"
	"github.com/chanwatch/chanwatch/channelmgr"
	"github.com/chanwatch/chanwatch/internal/etcdembed"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/etcdkv"
	"github.com/chanwatch/chanwatch/kv/memkv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/nodewatch"
)

type demoConfig struct {
	backend     string
	nodes       int
	channels    int
	collections int
	seed        int64
	ttl         time.Duration
	timeout     time.Duration
	failing     int
}

func newDemoCmd(g *globalFlags) *cobra.Command {
	cfg := demoConfig{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a coordinator and nodes on an embedded store; crash, add and drain nodes; check the invariants",
		Long: "demo starts an embedded etcd (or --backend=mem|raft, or --endpoints for an external etcd),\n" +
			"a coordinator and --nodes nodes in this process, registers --channels channels, then crashes\n" +
			"one node, adds one, drains one and restarts each in turn (a rolling restart). It prints the owners,\n" +
			"the time of each phase with its planned moves' gaps (Release returned to Watch returned), and whether\n" +
			"the four invariants held; it exits 0 only if they did. --failing-nodes adds nodes whose\n" +
			"handler fails every Watch: the coordinator quarantines them, every channel must settle on\n" +
			"the healthy nodes, and the demo reports how many channels were sent to each failing node.",
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case cfg.backend != "etcd" && cfg.backend != "mem" && cfg.backend != "raft":
				return usagef("--backend %q: want etcd, mem or raft", cfg.backend)
			case cfg.backend == "raft" && bench.StartRaft == nil:
				return usagef("--backend raft: this binary was built without the raft backend (hashicorp/raft links package testing); build with -tags raft")
			case cfg.nodes < 2:
				return usagef("--nodes must be >= 2 (one is crashed and one drained), got %d", cfg.nodes)
			case cfg.failing < 0:
				return usagef("--failing-nodes must be >= 0, got %d", cfg.failing)
			case cfg.channels < 1:
				return usagef("--channels must be >= 1, got %d", cfg.channels)
			case cfg.collections < 1:
				return usagef("--collections must be >= 1, got %d", cfg.collections)
			case cfg.ttl <= 0 || cfg.timeout <= 0:
				return usagef("--session-ttl and --phase-timeout must be > 0")
			case g.endpoints != "" && cfg.backend != "etcd":
				return usagef("--endpoints only goes with --backend=etcd")
			}
			lg := zap.NewNop()
			if cmd.Flags().Changed("log-level") {
				var err error
				if lg, err = g.logger(); err != nil {
					return err
				}
			}
			return runDemo(cmd.Context(), g, cfg, cmd.OutOrStdout(), lg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.backend, "backend", "etcd", "store: etcd (embedded unless --endpoints), mem, or raft (3 nodes on loopback)")
	f.IntVar(&cfg.nodes, "nodes", 4, "nodes to start")
	f.IntVar(&cfg.channels, "channels", 64, "channels to register")
	f.IntVar(&cfg.collections, "collections", 8, "collections the channels belong to")
	f.Int64Var(&cfg.seed, "seed", 1, "seed choosing which nodes crash and drain")
	f.DurationVar(&cfg.ttl, "session-ttl", 2*time.Second, "node and coordinator session TTL")
	f.DurationVar(&cfg.timeout, "phase-timeout", 3*time.Minute, "give up a phase after this long")
	f.IntVar(&cfg.failing, "failing-nodes", 0, "extra nodes whose handler fails every Watch (never crashed or drained)")
	return cmd
}

// demoStore hands out one backend handle per simulated process, so that
// closing a handle crashes that process alone.
type demoStore struct {
	name    string
	open    func() (kv.Backend, error)
	cleanup func()
}

func openDemoStore(g *globalFlags, cfg demoConfig, lg *zap.Logger) (*demoStore, error) {
	switch cfg.backend {
	case "mem":
		m := memkv.New(memkv.WithLogger(lg))
		return &demoStore{name: "memkv", open: func() (kv.Backend, error) { return m.NewClient(), nil }, cleanup: func() { m.Close() }}, nil
	case "raft":
		dir, err := os.MkdirTemp("", "chanwatch-demo-raft-")
		if err != nil {
			return nil, err
		}
		client, closeFn, err := bench.StartRaft(context.Background(), dir, true, lg)
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("start raft cluster: %w", err)
		}
		var mu sync.Mutex
		next := 0
		return &demoStore{
			name: "raftkv (3 nodes on loopback)",
			open: func() (kv.Backend, error) {
				mu.Lock()
				defer mu.Unlock()
				next++
				return client(next), nil
			},
			cleanup: func() { closeFn(); os.RemoveAll(dir) },
		}, nil
	}
	// etcd: external, or embedded in a temp dir.
	var (
		ccfg     clientv3.Config
		name     string
		cleanups []func()
		root     = "chanwatch-demo"
	)
	if g.endpoints != "" {
		var err error
		if ccfg, err = g.clientConfig(); err != nil {
			return nil, err
		}
		root = fmt.Sprintf("%s/demo-%d", strings.Trim(g.root, "/"), time.Now().UnixNano())
		name = "etcd at " + g.endpoints + ", root " + root
	} else {
		dir, err := os.MkdirTemp("", "chanwatch-demo-etcd-")
		if err != nil {
			return nil, err
		}
		srv, err := etcdembed.Start(dir, etcdembed.WithFastTimers(), etcdembed.WithUnsafeNoFsync(true))
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("start embedded etcd: %w", err)
		}
		cleanups = append(cleanups, func() { srv.Close(); os.RemoveAll(dir) })
		ccfg = clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 5 * time.Second}
		name = "embedded etcd at " + strings.Join(srv.Endpoints(), ",")
	}
	ccfg.Logger = zap.NewNop()
	var mu sync.Mutex
	st := &demoStore{name: name}
	st.open = func() (kv.Backend, error) {
		cli, err := clientv3.New(ccfg)
		if err != nil {
			return nil, err
		}
		b, err := etcdkv.New(cli, root, etcdkv.WithLogger(lg))
		if err != nil {
			cli.Close()
			return nil, err
		}
		mu.Lock()
		cleanups = append(cleanups, func() { cli.Close() })
		mu.Unlock()
		return closeBoth{b, cli}, nil
	}
	st.cleanup = func() {
		mu.Lock()
		defer mu.Unlock()
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}
	return st, nil
}

// closeBoth closes the etcd client with the backend: a crashed process
// loses its connection, so its lease is not kept alive by anyone.
type closeBoth struct {
	kv.Backend
	cli *clientv3.Client
}

func (c closeBoth) Close() error {
	err := c.Backend.Close()
	c.cli.Close()
	return err
}

type demoNode struct {
	name   string
	node   *nodewatch.Node
	b      kv.Backend
	cancel context.CancelFunc
	done   chan struct{}
	gone   bool
	// failing nodes fail every Watch.
	failing bool
}

type demoPhase struct {
	name string
	took time.Duration
	note string
	gaps string // planned moves: their count and gaps (see moveGaps)
}

type demo struct {
	cfg     demoConfig
	out     io.Writer
	tty     bool
	lg      *zap.Logger
	store   *demoStore
	rec     *audit.Recorder
	checker *audit.Checker
	nodes   []*demoNode
	phases  []demoPhase
	ctx     context.Context
}

func runDemo(ctx context.Context, g *globalFlags, cfg demoConfig, out io.Writer, lg *zap.Logger) error {
	tty := false
	if f, ok := out.(*os.File); ok {
		tty = isTerminal(f)
	}
	d := &demo{cfg: cfg, out: out, tty: tty, lg: lg, ctx: ctx}
	start := time.Now()
	st, err := openDemoStore(g, cfg, lg)
	if err != nil {
		return err
	}
	defer st.cleanup()
	d.store = st
	fmt.Fprintf(out, "chanwatch demo: %d nodes, %d channels in %d collections, on %s\n", cfg.nodes, cfg.channels, cfg.collections, st.name)
	if cfg.failing > 0 {
		fmt.Fprintf(out, "  plus %d node(s) whose handler fails every Watch\n", cfg.failing)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	// The checker watches the store from its own handle and checks the
	// invariants on every event; the recorder checks that no channel runs
	// on two nodes at once.
	d.rec = audit.NewRecorder(nil, 0)
	cb, err := st.open()
	if err != nil {
		return err
	}
	d.checker = audit.NewChecker(cb, d.rec)
	wg.Add(1)
	go func() { defer wg.Done(); _ = d.checker.Run(ctx) }()

	cob, err := st.open()
	if err != nil {
		return err
	}
	coord, err := channelmgr.New(cob, channelmgr.WithLogger(lg.Named("coord")), channelmgr.WithSessionTTL(cfg.ttl), channelmgr.WithNodeTTL(cfg.ttl),
		channelmgr.WithWatchTimeout(10*cfg.ttl), channelmgr.WithReleaseTimeout(10*cfg.ttl))
	if err != nil {
		return err
	}
	wg.Add(1)
	go func() { defer wg.Done(); _ = coord.Run(ctx) }()

	for i := 0; i < cfg.nodes+cfg.failing; i++ {
		if _, err := d.startNode(ctx, &wg, i >= cfg.nodes); err != nil {
			return err
		}
	}
	if err := d.phase("start", func() (bool, string) {
		ids := 0
		for _, n := range d.nodes {
			if n.node.ID() != 0 {
				ids++
			}
		}
		return ids == len(d.nodes) && coord.IsLeader(), fmt.Sprintf("%d/%d nodes up", ids, len(d.nodes))
	}); err != nil {
		return err
	}

	regStart := time.Now()
	if err := d.register(); err != nil {
		return err
	}
	if err := d.phase("register", d.converged); err != nil {
		return err
	}
	d.phases[len(d.phases)-1].took = time.Since(regStart)
	if cfg.failing > 0 {
		if err := d.phase("quarantine failing", func() (bool, string) {
			q, err := channelmgr.Quarantined(ctx, cob)
			if err != nil {
				return false, err.Error()
			}
			n := 0
			for _, dn := range d.nodes {
				if _, ok := q[dn.node.ID()]; ok && dn.failing {
					n++
				}
			}
			ok, s := d.converged()
			return ok && n == cfg.failing, fmt.Sprintf("%s, %d/%d failing nodes quarantined", s, n, cfg.failing)
		}); err != nil {
			return err
		}
	}

	rng := rand.New(rand.NewPCG(uint64(cfg.seed), 7))
	var healthy []*demoNode
	for _, n := range d.nodes {
		if !n.failing {
			healthy = append(healthy, n)
		}
	}
	victim := healthy[rng.IntN(len(healthy))]
	victimID := victim.node.ID()
	d.crash(victim)
	if err := d.phase(fmt.Sprintf("crash node %d", victimID), func() (bool, string) {
		if _, live := d.checker.View().Live[victimID]; live {
			return false, fmt.Sprintf("waiting for node %d's lease to expire", victimID)
		}
		return d.converged()
	}); err != nil {
		return err
	}

	joinSeq := d.rec.Seq()
	joiner, err := d.startNode(ctx, &wg, false)
	if err != nil {
		return err
	}
	if err := d.phase("add a node", func() (bool, string) {
		ok, s := d.converged()
		if _, live := d.checker.View().Live[joiner.node.ID()]; !ok || !live {
			return false, s
		}
		lo, hi := d.spread()
		return hi-lo <= 1, fmt.Sprintf("%s, node loads %d..%d", s, lo, hi)
	}); err != nil {
		return err
	}
	d.phases[len(d.phases)-1].gaps = d.moveGaps(joinSeq)

	var drainee *demoNode
	for _, n := range d.nodes {
		if !n.gone && n != joiner && !n.failing {
			drainee = n
			break
		}
	}
	drainID := drainee.node.ID()
	drainSeq := d.rec.Seq()
	drained := make(chan error, 1)
	go func() {
		sctx, c := context.WithTimeout(ctx, cfg.timeout)
		defer c()
		drained <- drainee.node.Stop(sctx)
	}()
	var drainErr error
	drainDone := false
	if err := d.phase(fmt.Sprintf("drain node %d", drainID), func() (bool, string) {
		if !drainDone {
			select {
			case drainErr = <-drained:
				drainDone = true
			default:
			}
		}
		ok, s := d.converged()
		if _, live := d.checker.View().Live[drainID]; live {
			return false, s + fmt.Sprintf(", node %d draining", drainID)
		}
		return ok && drainDone, s
	}); err != nil {
		return err
	}
	if drainErr != nil {
		return fmt.Errorf("drain node %d: %w", drainID, drainErr)
	}
	<-drainee.done
	drainee.gone = true
	d.phases[len(d.phases)-1].gaps = d.moveGaps(drainSeq)
	if err := d.rollingRestart(ctx, &wg); err != nil {
		return err
	}

	// Let the checker see the final revision before judging.
	sctx, c := context.WithTimeout(ctx, 30*time.Second)
	err = d.checker.Sync(sctx)
	c()
	if err != nil {
		return fmt.Errorf("checker: %w", err)
	}
	d.printSummary(time.Since(start))
	if err := d.reportFailing(ctx, cob); err != nil {
		return err
	}
	violations := append(d.rec.Violations(), d.checker.Violations()...)
	if len(violations) > 0 {
		fmt.Fprintf(out, "INVARIANTS VIOLATED (%d):\n", len(violations))
		for _, v := range violations {
			fmt.Fprintln(out, "  "+v)
		}
		return errors.New("invariants violated")
	}
	fmt.Fprintln(out, "invariants held: one key per channel, no channel on two nodes, no channel lost, every channel Watched")
	return nil
}

func (d *demo) startNode(ctx context.Context, wg *sync.WaitGroup, failing bool) (*demoNode, error) {
	b, err := d.store.open()
	if err != nil {
		return nil, err
	}
	dn := &demoNode{name: fmt.Sprintf("process-%d", len(d.nodes)+1), b: b, done: make(chan struct{}), failing: failing}
	var n *nodewatch.Node
	h := d.rec.Handler(dn.name, func() int64 {
		if n == nil {
			return 0
		}
		return n.ID()
	})
	if failing {
		h.FailWatch("", -1)
	}
	n, err = nodewatch.New(b, h, nodewatch.WithLogger(d.lg.Named(dn.name)), nodewatch.WithSessionTTL(d.cfg.ttl))
	if err != nil {
		return nil, err
	}
	dn.node = n
	nctx, cancel := context.WithCancel(ctx)
	dn.cancel = cancel
	d.nodes = append(d.nodes, dn)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(dn.done)
		_ = n.Run(nctx)
	}()
	return dn, nil
}

// crash kills a node as a process dies: its connection goes first, so its
// lease is not revoked and expires on the server after one TTL.
func (d *demo) crash(n *demoNode) {
	d.rec.Crash(n.name)
	n.b.Close()
	n.cancel()
	<-n.done
	n.gone = true
}

func (d *demo) register() error {
	b, err := d.store.open()
	if err != nil {
		return err
	}
	defer b.Close()
	names := make(chan int)
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range names {
				spec := meta.ChannelSpec{
					Name:         fmt.Sprintf("by-dev-rootcoord-dml_%d_%dv0", i%16, 1000+i),
					CollectionID: int64(1 + i%d.cfg.collections),
				}
				rctx, cancel := context.WithTimeout(d.ctx, 30*time.Second)
				err := channelmgr.Register(rctx, b, spec)
				cancel()
				if err != nil {
					errs <- fmt.Errorf("register %s: %w", spec.Name, err)
					return
				}
			}
		}()
	}
	var ferr error
	for i := 0; i < d.cfg.channels && ferr == nil; i++ {
		select {
		case names <- i:
		case ferr = <-errs:
		}
	}
	close(names)
	wg.Wait()
	if ferr == nil && len(errs) > 0 {
		ferr = <-errs
	}
	return ferr
}

// converged: every registered channel is Watched on a live serving node.
func (d *demo) converged() (bool, string) {
	v := d.checker.View()
	watched := 0
	for ch := range v.Registered {
		a, ok := v.Assign[ch]
		if ok && a.NodeID != 0 && a.Info.State == meta.Watched && v.Live[a.NodeID] == meta.NodeServing {
			watched++
		}
	}
	return len(v.Registered) == d.cfg.channels && watched == d.cfg.channels && len(v.Assign) == d.cfg.channels,
		fmt.Sprintf("%d/%d channels Watched", watched, d.cfg.channels)
}

// reportFailing prints, for each failing node, how many channels were sent
// to it and its published quarantine, and fails if one holds a channel.
func (d *demo) reportFailing(ctx context.Context, b kv.KV) error {
	if d.cfg.failing == 0 {
		return nil
	}
	q, err := channelmgr.Quarantined(ctx, b)
	if err != nil {
		return err
	}
	v := d.checker.View()
	for _, n := range d.nodes {
		if !n.failing {
			continue
		}
		id := n.node.ID()
		sent, held := 0, 0
		for ch := range v.Registered {
			for _, kc := range d.checker.History(ch) {
				if kc.NodeID == id && kc.Type == kv.EventPut && kc.Info.State == meta.ToWatch && kc.Info.Progress == 0 {
					sent++
				}
			}
			if a, ok := v.Assign[ch]; ok && a.NodeID == id {
				held++
			}
		}
		status := "not quarantined"
		if qq, ok := q[id]; ok {
			status = fmt.Sprintf("quarantined %d time(s) until %s: %s", qq.Quarantines, qq.Until.Format(time.TimeOnly), qq.Reason)
		}
		fmt.Fprintf(d.out, "failing node %d: %d channel attempts sent to it, %d held now; %s\n", id, sent, held, status)
		if held > 0 {
			return fmt.Errorf("failing node %d still holds %d channels", id, held)
		}
	}
	return nil
}

// spread returns the lowest and highest channel counts over live serving
// nodes that are not failing on purpose.
func (d *demo) spread() (int, int) {
	v := d.checker.View()
	failing := map[int64]bool{}
	for _, n := range d.nodes {
		if n.failing {
			failing[n.node.ID()] = true
		}
	}
	counts := map[int64]int{}
	for id, st := range v.Live {
		if st == meta.NodeServing && !failing[id] {
			counts[id] = 0
		}
	}
	for _, a := range v.Assign {
		if _, ok := counts[a.NodeID]; ok {
			counts[a.NodeID]++
		}
	}
	lo, hi := -1, 0
	for _, c := range counts {
		if lo < 0 || c < lo {
			lo = c
		}
		if c > hi {
			hi = c
		}
	}
	return lo, hi
}

// phase polls cond until it holds, showing progress, and records the time.
func (d *demo) phase(name string, cond func() (bool, string)) error {
	start := time.Now()
	deadline := start.Add(d.cfg.timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	last := ""
	for {
		ok, status := cond()
		if d.tty && status != last {
			fmt.Fprintf(d.out, "\r\033[K  %-22s %s", name, status)
			last = status
		}
		if ok {
			took := time.Since(start)
			if d.tty {
				fmt.Fprint(d.out, "\r\033[K")
			}
			fmt.Fprintf(d.out, "  %-22s done in %-8s %s\n", name, took.Round(time.Millisecond), status)
			d.phases = append(d.phases, demoPhase{name: name, took: took, note: status})
			return nil
		}
		if vs := append(d.rec.Violations(), d.checker.Violations()...); len(vs) > 0 {
			if d.tty {
				fmt.Fprintln(d.out)
			}
			return fmt.Errorf("phase %q: invariant violated: %s", name, vs[0])
		}
		if time.Now().After(deadline) {
			if d.tty {
				fmt.Fprintln(d.out)
			}
			return fmt.Errorf("phase %q did not converge within %s (%s)", name, d.cfg.timeout, status)
		}
		select {
		case <-d.ctx.Done():
			return d.ctx.Err()
		case <-tick.C:
		}
	}
}

func (d *demo) printSummary(total time.Duration) {
	v := d.checker.View()
	type nodeRow struct {
		id     int64
		state  meta.NodeState
		n      int
		states map[meta.State]int
	}
	rows := map[int64]*nodeRow{}
	for id, st := range v.Live {
		rows[id] = &nodeRow{id: id, state: st, states: map[meta.State]int{}}
	}
	var chans []string
	for ch, a := range v.Assign {
		chans = append(chans, ch)
		r := rows[a.NodeID]
		if r == nil {
			r = &nodeRow{id: a.NodeID, state: "gone", states: map[meta.State]int{}}
			rows[a.NodeID] = r
		}
		r.n++
		r.states[a.Info.State]++
	}
	sort.Strings(chans)
	ids := make([]int64, 0, len(rows))
	for id := range rows {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	fmt.Fprintln(d.out)
	tw := tabwriter.NewWriter(d.out, 0, 2, 2, ' ', 0)
	if len(chans) <= 64 {
		fmt.Fprintln(tw, "CHANNEL\tCOLLECTION\tOWNER\tSTATE\tTOKEN")
		for _, ch := range chans {
			a := v.Assign[ch]
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%d\n", ch, a.Info.CollectionID, a.NodeID, a.Info.State, a.Info.AssignRevision)
		}
		fmt.Fprintln(tw)
	}
	fmt.Fprintln(tw, "NODE\tSESSION\tCHANNELS\tSTATES")
	for _, id := range ids {
		r := rows[id]
		var parts []string
		for st, c := range r.states {
			parts = append(parts, fmt.Sprintf("%s=%d", st, c))
		}
		sort.Strings(parts)
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\n", id, r.state, r.n, strings.Join(parts, " "))
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "PHASE\tTIME\tPLANNED MOVES")
	for _, p := range d.phases {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", p.name, p.took.Round(time.Millisecond), cmp.Or(p.gaps, "-"))
	}
	fmt.Fprintf(tw, "total\t%s\t\n", total.Round(time.Millisecond))
	tw.Flush()
	fmt.Fprintln(d.out)
}
