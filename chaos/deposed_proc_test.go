package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/conformance"
	"github.com/chanwatch/chanwatch/internal/etcdproc"
	"github.com/chanwatch/chanwatch/internal/netproxy"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/etcdkv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/session"
)

// coordMetrics are the figures of a `chanwatch coord` process's /metrics
// that say what its writes became.
type coordMetrics struct {
	leader                     bool
	ok, conflict, errs, fenced float64
}

func (m coordMetrics) String() string {
	return fmt.Sprintf("leader=%v ok=%g conflict=%g error=%g fenced=%g", m.leader, m.ok, m.conflict, m.errs, m.fenced)
}

var metricLine = regexp.MustCompile(`^(chanwatch_coordinator_[a-z_]+)(\{result="([a-z]+)"\})? (\S+)$`)

// scrapeCoord reads addr's /metrics.
func scrapeCoord(ctx context.Context, addr string) (coordMetrics, error) {
	var m coordMetrics
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return m, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return m, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return m, fmt.Errorf("GET %s/metrics: %s", addr, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	seen := false
	for sc.Scan() {
		g := metricLine.FindStringSubmatch(sc.Text())
		if g == nil {
			continue
		}
		v, err := strconv.ParseFloat(g[4], 64)
		if err != nil {
			continue
		}
		switch g[1] + "/" + g[3] {
		case "chanwatch_coordinator_is_leader/":
			m.leader, seen = v == 1, true
		case "chanwatch_coordinator_fencing_rejections_total/":
			m.fenced = v
		case "chanwatch_coordinator_txns_total/ok":
			m.ok = v
		case "chanwatch_coordinator_txns_total/conflict":
			m.conflict = v
		case "chanwatch_coordinator_txns_total/error":
			m.errs = v
		}
	}
	if err := sc.Err(); err != nil {
		return m, err
	}
	if !seen {
		return m, fmt.Errorf("%s/metrics has no chanwatch_coordinator_is_leader", addr)
	}
	return m, nil
}

// cliCoord is a `chanwatch coord` process, its /metrics address, and the
// proxies it reaches etcd through (one per member).
type cliCoord struct {
	*proc
	id, http string
	proxies  []*netproxy.Proxy
}

// heldUp is how many bytes the coordinator sent that its proxies hold.
func (c *cliCoord) heldUp() int64 {
	var n int64
	for _, p := range c.proxies {
		n += p.Stats().HeldUp
	}
	return n
}

func (c *cliCoord) metrics(t testing.TB) coordMetrics {
	t.Helper()
	var m coordMetrics
	var err error
	// The process may still be starting its HTTP server, or be waking up.
	if !poll(10*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		m, err = scrapeCoord(ctx, c.http)
		return err == nil
	}) {
		t.Fatalf("coordinator %s: %v", c.id, err)
	}
	return m
}

// kill SIGKILLs the process and waits for it to exit.
func (p *proc) kill(t testing.TB) {
	t.Helper()
	p.signal(t, syscall.SIGKILL)
	<-p.done
}

// cliConverged says why the checker's view has not converged ("" when it
// has): every registered channel Watched on a live node, nodes live nodes.
func cliConverged(v conformance.View, nodes int) string {
	if len(v.Live) != nodes {
		return fmt.Sprintf("%d live nodes, want %d", len(v.Live), nodes)
	}
	if v.Leader == "" {
		return "no leader"
	}
	for ch := range v.Registered {
		a, ok := v.Assign[ch]
		if !ok {
			return fmt.Sprintf("channel %s has no single key", ch)
		}
		if _, live := v.Live[a.NodeID]; a.Info.State != meta.Watched || !live {
			return fmt.Sprintf("channel %s is %v on node %d", ch, a.Info.State, a.NodeID)
		}
	}
	for ch := range v.Assign {
		if !v.Registered[ch] {
			return fmt.Sprintf("deregistered channel %s still has a key", ch)
		}
	}
	return ""
}

// TestDeposedCoordinatorProcess is TestDeposedCoordinatorCannotWrite with
// real processes: bin/etcd, two `chanwatch coord` and three `chanwatch
// node` daemons. The leading coordinator is SIGSTOPped a moment after a
// channel is registered (so that a decision is in flight) and kept stopped
// for 2.5x its session TTL while more channels are registered and a node is
// SIGKILLed; the other takes over; then it gets SIGCONT. A
// conformance.Checker on its own client follows the root throughout: no
// invariant breaks and the leaderships never overlap. The old process's
// JSON log, which names the revision of every write it committed, shows
// none under its token at or after the takeover revision; its /metrics
// show it no longer leads and how its txns answered after the resume ended
// (committed before the takeover, or rejected by the leader guard:
// fencing_rejections_total), or that it saw its leadership end first and
// sent none.
func TestDeposedCoordinatorProcess(t *testing.T) {
	r := newReport(t)
	rng := newRand(t)
	const ttl = 2 * time.Second
	etcd := etcdproc.NewForTest(t, scale(1, 3))
	root := uniqueRoot(t)
	eps := strings.Join(etcd.Endpoints(), ",")
	ctx := testCtx(t)

	newHandle := func() kv.Backend {
		cli, err := etcd.Client()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cli.Close() })
		b, err := etcdkv.New(cli, root, etcdkv.WithMaxTxnOps(etcd.MaxTxnOps()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		return b
	}
	obs := newHandle()
	chk := conformance.NewChecker(newHandle(), conformance.NewRecorder(nil, 0))
	cctx, stopChk := context.WithCancel(ctx)
	chkDone := make(chan error, 1)
	go func() { chkDone <- chk.Run(cctx) }()
	defer func() {
		stopChk()
		if err := <-chkDone; err != nil {
			t.Errorf("checker: %v", err)
		}
	}()

	bin := chanwatchBin(t)
	common := []string{"--root", root, "--log-format", "json"}
	global := append([]string{"--endpoints", eps}, common...)
	seq := 0
	startCoordProc := func() *cliCoord {
		seq++
		id, addr := fmt.Sprintf("c%d", seq), freePort(t)
		var proxies []*netproxy.Proxy
		var peps []string
		for _, ep := range etcd.Endpoints() {
			px, err := netproxy.New(strings.TrimPrefix(ep, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = px.Close() })
			proxies = append(proxies, px)
			peps = append(peps, "http://"+px.Addr())
		}
		p := startExe(t, bin, id, append([]string{"coord", "--endpoints", strings.Join(peps, ",")}, append(common, "--id", id, "--http", addr,
			"--session-ttl", ttl.String(), "--node-ttl", ttl.String(),
			"--watch-timeout", (3*ttl).String(), "--release-timeout", (3*ttl).String())...)...)
		return &cliCoord{proc: p, id: id, http: addr, proxies: proxies}
	}
	startNodeProc := func() *proc {
		seq++
		name := fmt.Sprintf("n%d", seq)
		return startExe(t, bin, name, append([]string{"node"}, append(global, "--http", "", "--addr", name,
			"--session-ttl", ttl.String())...)...)
	}
	coords := []*cliCoord{startCoordProc(), startCoordProc()}
	nodes := []*proc{startNodeProc(), startNodeProc(), startNodeProc()}
	registerChannels(t, obs, channelNames("pd", scale(8, 24))...)

	converge := func(since time.Time) {
		t.Helper()
		var why string
		if !poll(30*time.Second, func() bool {
			sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			if err := chk.Sync(sctx); err != nil {
				why = err.Error()
				return false
			}
			why = cliConverged(chk.View(), len(nodes))
			return why == ""
		}) {
			t.Fatalf("no convergence within 30s: %s", why)
		}
		r.reconverged(time.Since(since), ttl)
	}
	converge(time.Now())

	var okAfter, fencedAfter, heldFenced, tried, silent float64
	lateWrites, heldRounds, heldTxns := 0, 0, 0
	cutRounds := 0
	for round := range scale(3, 6) {
		// Rounds of three kinds. 0: SIGSTOP. 1: SIGSTOP, and the proxies
		// hold what the leader sends from just before the registration
		// until after the takeover (they pass again while it is still
		// stopped): its decision is in flight during the whole stop and
		// reaches etcd after the new leader's first write, where the
		// leader guard must reject it. 2: no SIGSTOP; the proxies cut the
		// running leader off etcd (blackhole): it must see its session
		// fence and stop leading before the standby takes over.
		hold, cut := round%3 == 1, round%3 == 2
		var revCut int64 // the store's revision once the cut is in force
		leaderCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		s, token, err := session.Leader(leaderCtx, obs)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		var old *cliCoord
		for _, c := range coords {
			if c.id == s.ID {
				old = c
			}
		}
		if old == nil {
			t.Fatalf("leader %q is none of the coordinators", s.ID)
		}
		// Read the counters on a quiet leader, then give it work and
		// freeze it a moment later, so that decisions are in flight
		// (sent or about to be) when it stops.
		var before coordMetrics
		eventually(t, 10*time.Second, "the leader is quiet", func() bool {
			m1 := old.metrics(t)
			pace(ctx, 300*time.Millisecond)
			before = old.metrics(t)
			return m1 == before && before.leader
		})
		chs := channelNames(fmt.Sprintf("pd%c-", 'a'+round), 6)
		held0, txnHeld := int64(0), false
		if hold {
			setMode(old.proxies, netproxy.HoldUp)
			held0 = old.heldUp()
		}
		registerChannels(t, obs, chs[0])
		if hold {
			// A txn is far larger than the keep-alives and window updates
			// the process also sends: wait until one is held.
			txnHeld = poll(ttl/2, func() bool { return old.heldUp()-held0 >= 150 })
			r.note("round %d: %d bytes held from %s (txn held: %v)", round, old.heldUp()-held0, old.id, txnHeld)
			heldRounds++
			if txnHeld {
				heldTxns++
			}
		} else {
			pace(ctx, time.Duration(rng.IntN(3000))*time.Microsecond)
		}
		if cut {
			pace(ctx, time.Duration(rng.IntN(3000))*time.Microsecond)
			setMode(old.proxies, netproxy.Blackhole)
			// A txn that reached etcd before the cut is a legitimate
			// write, even if its answer is counted after: what the cut
			// forbids is a write committed after it. A linearizable read
			// now returns a revision at or above every such write.
			var err error
			if _, revCut, err = obs.Get(ctx, "chaos-rev-probe"); err != nil && !errors.Is(err, kv.ErrKeyNotFound) {
				t.Fatalf("read the revision at the cut: %v", err)
			}
			cutRounds++
			r.fault("round %d: leader %s (token %d) cut off etcd for 2.5 TTL just after a registration; %s", round, old.id, token, before)
		} else {
			old.signal(t, syscall.SIGSTOP)
			r.fault("round %d: leader %s (token %d) SIGSTOP for 2.5 TTL just after a registration (its writes held: %v); %s", round, old.id, token, hold, before)
		}
		stopped := time.Now()

		// More work for the frozen leader: channels, and a node crash.
		registerChannels(t, obs, chs[1:]...)
		victim := nodes[0]
		r.fault("round %d: node %s SIGKILL", round, victim.name)
		victim.kill(t)
		nodes = append(nodes[1:], startNodeProc())

		var newToken int64
		var newID string
		eventually(t, 10*time.Second, "another coordinator leads", func() bool {
			lctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			s, tok, err := session.Leader(lctx, obs)
			newID, newToken = s.ID, tok
			return err == nil && s.ID != old.id
		})
		r.figure(fmt.Sprintf("takeover%d", round), fmt.Sprintf("%.2fxTTL", float64(time.Since(stopped))/float64(ttl)))
		if cut {
			// Running but cut off, the old leader fenced itself (its
			// session's deadline comes a margin before the lease's
			// expiry): it no longer claims to lead.
			if m := old.metrics(t); m.leader {
				r.violate("cut-off coordinator %s still leads after %s took over (%s)", old.id, newID, m)
			}
		}
		pace(ctx, 5*ttl/2-time.Since(stopped))
		switch {
		case cut:
			r.note("%s leads with token %d; %s's proxies pass again", newID, newToken, old.id)
			setMode(old.proxies, netproxy.Pass)
		case hold:
			r.note("%s leads with token %d; %s's %d held bytes go out", newID, newToken, old.id, old.heldUp())
			setMode(old.proxies, netproxy.Pass)
		}
		if !cut {
			r.note("%s leads with token %d; SIGCONT %s", newID, newToken, old.id)
			old.signal(t, syscall.SIGCONT)
		}
		resumed := time.Now()
		converge(resumed)
		// Give the old process a TTL more to act on what it saw while
		// asleep, then read what became of its writes.
		pace(ctx, ttl)
		after := old.metrics(t)
		r.note("%s after the resume: %s", old.id, after)
		if after.leader {
			r.violate("%s says it leads after %s took over", old.id, newID)
		}
		// Txns answered after the resume may have landed before the
		// takeover (sent just before SIGSTOP); the process's log says at
		// which revision each of its committed writes landed.
		okAfter += after.ok - before.ok
		writes, last := committedWrites(t, old.log, token)
		for _, w := range writes {
			if w.rev >= newToken {
				lateWrites++
				r.violate("deposed coordinator %s (token %d) committed %q on %s at revision %d, after %s took over at %d",
					old.id, token, w.msg, w.ch, w.rev, newID, newToken)
			}
		}
		r.note("%s's last write under token %d landed at revision %d; %s took over at %d", old.id, token, last, newID, newToken)
		fencedAfter += after.fenced - before.fenced
		if cut {
			for _, w := range writes {
				if w.rev > revCut {
					r.violate("cut-off coordinator %s committed %q on %s at revision %d, after it was cut off at revision %d",
						old.id, w.msg, w.ch, w.rev, revCut)
				}
			}
		}
		if hold {
			heldFenced += after.fenced - before.fenced
			// The held txn reached etcd after the takeover and its answer
			// was waiting when the process woke: the coordinator must have
			// seen the leader guard reject it.
			if txnHeld && after.fenced == before.fenced {
				r.violate("deposed coordinator %s: its held txn got no leader-guard rejection (%s)", old.id, after)
			}
			// Everything it sent after its proxies began to hold reached
			// etcd after the takeover: not one txn may have succeeded.
			if after.ok > before.ok {
				r.violate("deposed coordinator %s: %g txn(s) it sent while held succeeded after %s took over",
					old.id, after.ok-before.ok, newID)
			}
		}
		if after.ok > before.ok || after.fenced > before.fenced || after.conflict > before.conflict || after.errs > before.errs {
			tried++
		} else {
			silent++
		}
		// The store: the old term ended before the new one began.
		vctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := chk.Sync(vctx); err != nil {
			t.Fatal(err)
		}
		cancel()
		r.note("terms %s", chk.Terms())
		if !termsDisjoint(chk.Terms()) {
			r.violate("coordinator terms overlap: %s", chk.Terms())
		}
		coords = []*cliCoord{coordByID(coords, newID), old}
	}
	for _, v := range chk.Violations() {
		r.violate("checker: %s", v)
	}
	r.figure("deposed_ok_answered_after_resume", okAfter)
	r.figure("deposed_fenced", fencedAfter)
	r.figure("deposed_late_writes", lateWrites)
	r.figure("rounds_txn_after_resume", tried)
	r.figure("rounds_no_txn", silent)
	r.figure("held_rounds", heldRounds)
	r.figure("held_txns", heldTxns)
	r.figure("held_fenced", heldFenced)
	r.figure("cut_rounds", cutRounds)
	if heldRounds > 0 && heldTxns == 0 {
		r.violate("no held round caught a txn in flight: the leader guard's rejection went untested")
	}
	// Kept for the report (written if the test fails, or with
	// CHANWATCH_KEEP_REPORT set).
	for _, c := range coords {
		if b, err := os.ReadFile(c.log); err == nil {
			r.attach(c.id+".log", b)
		}
	}
}

// coordWrite is a committed write as a coordinator logged it.
type coordWrite struct {
	msg, ch string
	rev     int64
}

// committedWrites reads a `chanwatch coord` JSON log for the writes it
// committed under token (the lines that log a txn's response revision),
// and the highest revision among them.
func committedWrites(t testing.TB, path string, token int64) ([]coordWrite, int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	var out []coordWrite
	var last int64
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var line struct {
			Msg     string `json:"msg"`
			Token   int64  `json:"token"`
			Channel string `json:"channel"`
			Rev     int64  `json:"revision"`
		}
		if json.Unmarshal(sc.Bytes(), &line) != nil || line.Token != token {
			continue
		}
		switch line.Msg {
		case "assigned channel", "releasing channel", "deleted assignment", "channel remaining: no serving node":
			out = append(out, coordWrite{msg: line.Msg, ch: line.Channel, rev: line.Rev})
			last = max(last, line.Rev)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out, last
}

func coordByID(cs []*cliCoord, id string) *cliCoord {
	for _, c := range cs {
		if c.id == id {
			return c
		}
	}
	return nil
}

var termRE = regexp.MustCompile(`\[(\S+) (\d+)\.\.(\d+)\]`)

// termsDisjoint checks Checker.Terms ("[id create..deleted]..."): every term
// but the last ended before the next one began.
func termsDisjoint(terms string) bool {
	ts := termRE.FindAllStringSubmatch(terms, -1)
	for i := 0; i+1 < len(ts); i++ {
		end, _ := strconv.ParseInt(ts[i][3], 10, 64)
		next, _ := strconv.ParseInt(ts[i+1][2], 10, 64)
		if end == 0 || end > next {
			return false
		}
	}
	return true
}
