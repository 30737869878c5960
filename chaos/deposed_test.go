package chaos

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/chanwatch/chanwatch/channelmgr"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/session"
)

// frozenProcess stands for a process that can be SIGSTOPped in place: its
// clock (a fake clock that follows real time while running) stops, and
// every call it makes waits; on resume the clock jumps ahead and the calls
// that waited go out, as requests sitting in a socket buffer are delivered
// after SIGCONT even if their deadline passed meanwhile. It records every
// Txn with the outcome. freezeAtNextWrite makes it freeze as its next
// guarded write goes out: a decision in flight at the SIGSTOP.
type frozenProcess struct {
	kv.Backend
	clk *clockwork.FakeClock

	mu      sync.Mutex
	frozen  bool
	thaw    chan struct{}
	atWrite chan struct{} // armed: closed when the next guarded write freezes the process
	last    time.Time
	txns    []txnRecord
	stopped chan struct{}
}

type txnRecord struct {
	guard     int64 // the leader token the txn is guarded by (0: none)
	succeeded bool
	rev       int64
	err       error
	sentAt    time.Time
}

func newFrozenProcess(b kv.Backend) *frozenProcess {
	f := &frozenProcess{Backend: b, clk: clockwork.NewFakeClock(), last: time.Now(), stopped: make(chan struct{})}
	go func() {
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-f.stopped:
				return
			case <-tick.C:
				f.mu.Lock()
				if !f.frozen {
					now := time.Now()
					f.clk.Advance(now.Sub(f.last))
					f.last = now
				}
				f.mu.Unlock()
			}
		}
	}()
	return f
}

func (f *frozenProcess) close() { close(f.stopped) }

func (f *frozenProcess) freeze() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frozen = true
	f.thaw = make(chan struct{})
}

func (f *frozenProcess) resume() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frozen = false
	now := time.Now()
	f.clk.Advance(now.Sub(f.last))
	f.last = now
	close(f.thaw)
}

// freezeAtNextWrite arms a freeze at the next guarded write; the returned
// channel closes when it happened.
func (f *frozenProcess) freezeAtNextWrite() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.atWrite = make(chan struct{})
	return f.atWrite
}

// gate waits while the process is frozen; a call that waited goes out
// without its deadline (it was already "sent").
func (f *frozenProcess) gate(ctx context.Context) context.Context {
	f.mu.Lock()
	frozen, thaw := f.frozen, f.thaw
	f.mu.Unlock()
	if !frozen {
		return ctx
	}
	<-thaw
	return context.WithoutCancel(ctx)
}

func (f *frozenProcess) Txn(ctx context.Context, t kv.Txn) (kv.TxnResponse, error) {
	guarded, writes := false, false
	for _, c := range t.If {
		guarded = guarded || c.Key == meta.CoordinatorKey && c.Target == kv.TargetCreateRevision && c.Result == kv.Equal
	}
	for _, op := range t.Then {
		writes = writes || op.IsWrite()
	}
	f.mu.Lock()
	if f.atWrite != nil && guarded && writes {
		f.frozen = true
		f.thaw = make(chan struct{})
		close(f.atWrite)
		f.atWrite = nil
	}
	f.mu.Unlock()
	ctx = f.gate(ctx)
	rec := txnRecord{sentAt: time.Now()}
	for _, c := range t.If {
		if c.Key == meta.CoordinatorKey && c.Target == kv.TargetCreateRevision && c.Result == kv.Equal {
			rec.guard = c.Num
		}
	}
	resp, err := f.Backend.Txn(ctx, t)
	rec.succeeded, rec.rev, rec.err = resp.Succeeded, resp.Revision, err
	f.mu.Lock()
	f.txns = append(f.txns, rec)
	f.mu.Unlock()
	return resp, err
}

func (f *frozenProcess) Get(ctx context.Context, key string) (kv.KeyValue, int64, error) {
	return f.Backend.Get(f.gate(ctx), key)
}

func (f *frozenProcess) List(ctx context.Context, prefix string) ([]kv.KeyValue, int64, error) {
	return f.Backend.List(f.gate(ctx), prefix)
}

func (f *frozenProcess) KeepAliveOnce(ctx context.Context, id kv.LeaseID) (time.Duration, error) {
	return f.Backend.KeepAliveOnce(f.gate(ctx), id)
}

func (f *frozenProcess) Grant(ctx context.Context, ttl time.Duration) (kv.LeaseID, error) {
	return f.Backend.Grant(f.gate(ctx), ttl)
}

func (f *frozenProcess) Revoke(ctx context.Context, id kv.LeaseID) error {
	return f.Backend.Revoke(f.gate(ctx), id)
}

// Watch delivers nothing while frozen: the responses wait, in order.
func (f *frozenProcess) Watch(ctx context.Context, prefix string, fromRev int64) kv.WatchChan {
	in := f.Backend.Watch(ctx, prefix, fromRev)
	out := make(chan kv.WatchResponse)
	go func() {
		defer close(out)
		for resp := range in {
			f.gate(ctx)
			select {
			case out <- resp:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// TestDeposedCoordinatorCannotWrite: two coordinators; the leader is frozen
// (SIGSTOP in place: its clock and its I/O stop) as it sends the placement
// of new channels, and kept frozen past its TTL while a node dies; the
// other takes over. When the old leader resumes, every txn it sends is rejected by
// its leader guard, and the store holds no write of it after the takeover.
// It runs on memkv, etcd and a 3-node raftkv cluster.
func TestDeposedCoordinatorCannotWrite(t *testing.T) {
	envs := crashEnvs(t)
	for _, backend := range []string{"mem", "etcd", "raft"} {
		t.Run(backend, func(t *testing.T) { deposedCannotWrite(t, envs[backend]()) })
	}
}

func deposedCannotWrite(t *testing.T, env crashEnv) {
	r := newReport(t)
	l := newLedger(r)
	tm := env.tm
	root := uniqueRoot(t)
	open := func() (kv.Backend, func()) { return env.handle(t, root) }
	store, closeStore := open()
	t.Cleanup(closeStore)

	var nodes []*member
	for i := range 3 {
		h, closeH := open()
		nodes = append(nodes, startNode(t, l, "n"+string(rune('0'+i)), h, closeH, tm))
	}
	registerChannels(t, store, channelNames("d", 12)...)

	var rejected, total int
	for round := range scale(2, 8) {
		ha, closeA := open()
		fa := newFrozenProcess(ha)
		a := startCoord(t, "a", fa, closeA, tm, channelmgr.WithClock(fa.clk))
		eventually(t, 10*time.Second, "a leads", a.coord.IsLeader)
		awaitConvergence(t, r, store, nodes, l, tm.ttl, 20*time.Second, time.Now())
		hb, closeB := open()
		b := startCoord(t, "b", hb, closeB, tm)

		_, aToken, err := session.Leader(testCtx(t), store)
		if err != nil {
			t.Fatal(err)
		}
		// New channels for the leader: it freezes as its placement goes
		// out (a decision in flight at the SIGSTOP).
		frozen := fa.freezeAtNextWrite()
		registerChannels(t, store, channelNames("d"+string(rune('a'+round))+"-", 4)...)
		select {
		case <-frozen:
		case <-time.After(10 * time.Second):
			t.Fatal("the leader sent no write for the new channels")
		}
		r.fault("round %d: leader a (token %d) frozen for 3 TTL as it writes", round, aToken)
		// More work for the frozen leader: a node crash.
		victim := nodes[0]
		l.crash(victim.name)
		victim.kill()
		h, closeH := open()
		nodes = append(nodes[1:], startNode(t, l, victim.name+"'", h, closeH, tm))
		eventually(t, 10*time.Second, "b takes over", b.coord.IsLeader)
		pace(testCtx(t), 3*tm.ttl)
		_, bToken, err := session.Leader(testCtx(t), store)
		if err != nil {
			t.Fatal(err)
		}
		resumed := time.Now()
		fa.resume()
		r.note("a resumed; b leads with token %d", bToken)
		eventually(t, 10*time.Second, "a knows it lost", func() bool { return !a.coord.IsLeader() })
		awaitConvergence(t, r, store, nodes, l, tm.ttl, 30*time.Second, resumed)
		a.kill()
		fa.close()
		fa.mu.Lock()
		roundTotal := 0
		for _, tx := range fa.txns {
			if tx.guard != aToken {
				continue
			}
			if tx.succeeded && tx.rev >= bToken {
				r.violate("deposed coordinator a (token %d) wrote at revision %d after b took over at %d", aToken, tx.rev, bToken)
			}
			// Txns held by the freeze go out at the resume.
			if !tx.sentAt.Before(resumed) {
				total++
				roundTotal++
				if !tx.succeeded {
					rejected++
				}
			}
		}
		fa.mu.Unlock()
		if roundTotal == 0 {
			r.violate("round %d: the write a froze in went nowhere after the resume", round)
		}
		b.stop()
	}
	for _, n := range nodes {
		n.stop()
	}
	r.figure("deposed_txns", total)
	r.figure("deposed_rejected", rejected)
	if total == 0 {
		t.Fatal("the deposed coordinator sent no txn after it resumed: the test exercised nothing")
	}
	l.figures()
}
