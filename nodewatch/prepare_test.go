package nodewatch_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/nodewatch"
	"github.com/chanwatch/chanwatch/session"
)

// prepHandler is the test handler with the Preparer capability.
type prepHandler struct {
	*handler
	pmu        sync.Mutex
	prepare    func(ctx context.Context, info meta.ChannelInfo) error
	prepared   []meta.ChannelInfo
	unprepared []string
}

func (h *prepHandler) Prepare(ctx context.Context, info meta.ChannelInfo) error {
	h.enter(info.Name, "prepare")
	defer func() {
		h.mu.Lock()
		h.busy[info.Name] = false
		h.mu.Unlock()
	}()
	h.pmu.Lock()
	h.prepared = append(h.prepared, info)
	f := h.prepare
	h.pmu.Unlock()
	if f != nil {
		return f(ctx, info)
	}
	return nil
}

func (h *prepHandler) Unprepare(ctx context.Context, ch string) error {
	h.enter(ch, "unprepare")
	defer func() {
		h.mu.Lock()
		h.busy[ch] = false
		h.mu.Unlock()
	}()
	h.pmu.Lock()
	defer h.pmu.Unlock()
	h.unprepared = append(h.unprepared, ch)
	return nil
}

func (h *prepHandler) unprepares() []string {
	h.pmu.Lock()
	defer h.pmu.Unlock()
	return slices.Clone(h.unprepared)
}

func newPrepEnv(t *testing.T) (*env, *prepHandler) {
	e := newEnv(t)
	ph := &prepHandler{handler: e.h}
	n, err := nodewatch.New(e.client, ph, nodewatch.WithClock(e.clock), nodewatch.WithSessionTTL(longTTL),
		nodewatch.WithProgressInterval(progressEvery))
	if err != nil {
		t.Fatal(err)
	}
	e.node = n
	return e, ph
}

// putPrepare writes a ToPrepare request as the coordinator would.
func (e *env) putPrepare(node int64, ch string) int64 {
	e.t.Helper()
	val, err := meta.EncodePrepareInfo(meta.ChannelInfo{Name: ch, CollectionID: 100, State: meta.ToPrepare, StartTime: e.clock.Now()})
	if err != nil {
		e.t.Fatal(err)
	}
	rev, err := kv.Put(e.ctx(), e.store, meta.PrepareKey(node, ch), val)
	if err != nil {
		e.t.Fatal(err)
	}
	return rev
}

func (e *env) waitPrepare(node int64, ch string, want meta.State) meta.ChannelInfo {
	e.t.Helper()
	var info meta.ChannelInfo
	eventually(e.t, func() bool {
		got, _, err := e.store.Get(e.ctx(), meta.PrepareKey(node, ch))
		if err != nil {
			return false
		}
		info, err = meta.DecodePrepareInfo(got.Key, got.Value)
		return err == nil && info.State == want
	}, waitFor, "prepare key of %s is %v", ch, want)
	return info
}

// takeOver completes a move as the coordinator does (one txn withdraws
// the request and assigns ch), waits for Watched, stops the node, and
// checks that Prepare came before Watch and that Unprepare never ran.
func (e *env) takeOver(ph *prepHandler, id int64, ch string) {
	e.t.Helper()
	val, _ := meta.EncodeChannelInfo(meta.ChannelInfo{Name: ch, CollectionID: 100, State: meta.ToWatch, StartTime: e.clock.Now()})
	if _, err := e.store.Txn(e.ctx(), kv.Txn{Then: []kv.Op{kv.OpDelete(meta.PrepareKey(id, ch)), kv.OpPut(meta.ChannelKey(id, ch), val)}}); err != nil {
		e.t.Fatal(err)
	}
	e.waitState(id, ch, meta.Watched)
	e.stop()
	log := e.h.calls()
	if i, j := slices.Index(log, "prepare "+ch), slices.Index(log, "watch "+ch); i < 0 || j < i {
		e.t.Fatalf("calls %v: want prepare before watch", log)
	}
	if u := ph.unprepares(); len(u) != 0 {
		e.t.Fatalf("Unprepare called %v although the channel was assigned to the node", u)
	}
}

func TestPrepareThenWatch(t *testing.T) {
	e, ph := newPrepEnv(t)
	id := e.start()
	members, _, err := session.ListNodes(e.ctx(), e.store)
	if err != nil || len(members) != 1 || !members[0].Prepare {
		t.Fatalf("members = %+v, %v: want the node to advertise Prepare", members, err)
	}
	e.putPrepare(id, "dml_0")
	e.waitPrepare(id, "dml_0", meta.Prepared)
	if len(e.h.watches("dml_0")) != 0 {
		t.Fatal("Watch called for a prepare request")
	}
	e.takeOver(ph, id, "dml_0")
	if p := ph.prepared; len(p) != 1 || p[0].AssignRevision != 0 || p[0].State != meta.ToPrepare {
		t.Fatalf("Prepare got %+v; want one request with no fencing token", p)
	}
}

func TestPrepareFailureAnswered(t *testing.T) {
	e, ph := newPrepEnv(t)
	ph.prepare = func(context.Context, meta.ChannelInfo) error { return errors.New("no snapshot") }
	id := e.start()
	e.putPrepare(id, "dml_0")
	info := e.waitPrepare(id, "dml_0", meta.PrepareFailure)
	if info.LastError != "no snapshot" || info.FailedNode != id {
		t.Fatalf("PrepareFailure %+v: want the handler's error and the node", info)
	}
}

// preparing starts a node whose Prepare runs until its ctx ends, and asks
// it to prepare ch; it returns once Prepare runs.
func preparing(t *testing.T, ch string) (*env, *prepHandler, int64) {
	e, ph := newPrepEnv(t)
	started := make(chan struct{})
	ph.prepare = func(ctx context.Context, _ meta.ChannelInfo) error {
		close(started)
		<-ctx.Done()
		return ctx.Err()
	}
	id := e.start()
	e.putPrepare(id, ch)
	<-started
	return e, ph, id
}

func TestPrepareWithdrawn(t *testing.T) {
	e, ph, id := preparing(t, "dml_0")
	if _, _, err := kv.Delete(e.ctx(), e.store, meta.PrepareKey(id, "dml_0")); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool { return slices.Equal(ph.unprepares(), []string{"dml_0"}) }, waitFor, "Unprepare(dml_0) once")
	if _, _, err := e.store.Get(e.ctx(), meta.PrepareKey(id, "dml_0")); !errors.Is(err, kv.ErrKeyNotFound) {
		t.Fatalf("a withdrawn request was answered: %v", err)
	}
}

// A ToWatch that comes while Prepare still runs (the request deleted in
// the same txn) cancels Prepare, waits for it, then watches; no Unprepare.
func TestWatchCancelsRunningPrepare(t *testing.T) {
	e, ph, id := preparing(t, "dml_0")
	e.takeOver(ph, id, "dml_0")
}

// A preparation whose request is withdrawn in the txn that assigns the
// channel is the Watch's to take over; when no Watch follows (here: the
// channel's Release from an earlier assignment fails again, so the node
// answers WatchFailure without calling Watch) it must still be
// Unprepared. It was not: the preparation, skipped as "assigned", was
// never Unprepared, not even when the node stopped.
func TestPreparationNotWatchedIsUnprepared(t *testing.T) {
	e, ph := newPrepEnv(t)
	e.h.release = func(context.Context, string) error { return errors.New("flush failed") }
	id := e.start()
	e.assign(id, "dml_0")
	e.waitState(id, "dml_0", meta.Watched)
	e.del(id, "dml_0") // Release fails: the handler still holds the channel
	eventually(t, func() bool { return e.h.released("dml_0") == 1 }, waitFor, "Release(dml_0) once")
	e.putPrepare(id, "dml_0")
	e.waitPrepare(id, "dml_0", meta.Prepared)
	val, _ := meta.EncodeChannelInfo(meta.ChannelInfo{Name: "dml_0", CollectionID: 100, State: meta.ToWatch, StartTime: e.clock.Now()})
	if _, err := e.store.Txn(e.ctx(), kv.Txn{Then: []kv.Op{kv.OpDelete(meta.PrepareKey(id, "dml_0")), kv.OpPut(meta.ChannelKey(id, "dml_0"), val)}}); err != nil {
		t.Fatal(err)
	}
	e.waitState(id, "dml_0", meta.WatchFailure)
	if n := len(e.h.watches("dml_0")); n != 1 {
		t.Fatalf("Watch(dml_0) called %d times, want once (not while the handler still holds it)", n)
	}
	eventually(t, func() bool { return slices.Equal(ph.unprepares(), []string{"dml_0"}) }, waitFor,
		"Unprepare(dml_0) once: no Watch took the preparation over (unprepared %v)", ph.unprepares())
	e.stop()
	if u := ph.unprepares(); !slices.Equal(u, []string{"dml_0"}) {
		t.Fatalf("Unprepare calls %v after stop, want one", u)
	}
}

// A request withdrawn before its Prepare could start (it waited for the
// channel's previous preparation to end) has nothing to unprepare: one
// Prepare, one Unprepare.
func TestRequestWithdrawnBeforePrepareNotUnprepared(t *testing.T) {
	e, ph := newPrepEnv(t)
	gate := make(chan struct{})
	started := make(chan struct{}, 2)
	ph.prepare = func(ctx context.Context, _ meta.ChannelInfo) error {
		started <- struct{}{}
		<-ctx.Done()
		<-gate // returns late, as the node allows
		return ctx.Err()
	}
	id := e.start()
	e.putPrepare(id, "dml_0")
	<-started
	key := meta.PrepareKey(id, "dml_0")
	if _, _, err := kv.Delete(e.ctx(), e.store, key); err != nil {
		t.Fatal(err)
	}
	e.putPrepare(id, "dml_0") // waits for the first preparation to end
	if _, _, err := kv.Delete(e.ctx(), e.store, key); err != nil {
		t.Fatal(err)
	}
	e.putPrepare(id, "unrelated") // its Prepare starting shows both events above were seen
	<-started
	close(gate)
	eventually(t, func() bool { return len(ph.unprepares()) >= 1 }, waitFor, "an Unprepare")
	e.stop()
	ph.pmu.Lock()
	defer ph.pmu.Unlock()
	var prepared []string
	for _, p := range ph.prepared {
		prepared = append(prepared, p.Name)
	}
	count := func(names []string) int {
		n := 0
		for _, name := range names {
			if name == "dml_0" {
				n++
			}
		}
		return n
	}
	if count(ph.unprepared) != 1 || count(prepared) != 1 {
		t.Fatalf("prepared %v, unprepared %v: want dml_0 prepared once and unprepared once", prepared, ph.unprepared)
	}
}
