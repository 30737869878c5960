package nodewatch_test

import (
	"errors"
	"math"
	"testing"

	"github.com/chanwatch/chanwatch/kv/memkv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/nodewatch"
	"github.com/chanwatch/chanwatch/session"
)

func TestCapacityAndLabelsAdvertised(t *testing.T) {
	labels := meta.MustLabels("zone=a", "group=ingest")
	e := newEnv(t, nodewatch.WithCapacity(2.5), nodewatch.WithLabels(labels))
	id := e.start()
	member := func() session.Member {
		t.Helper()
		members, _, err := session.ListNodes(e.ctx(), e.store)
		if err != nil || len(members) != 1 || members[0].ID != id {
			t.Fatalf("members = %+v, %v", members, err)
		}
		return members[0]
	}
	if m := member(); m.Capacity != 2.5 || m.Labels != labels {
		t.Fatalf("session advertises capacity %v, labels %v; want 2.5, %v", m.Capacity, m.Labels, labels)
	}
	// A live change rewrites the session key on the same lease.
	before := member()
	if err := e.node.SetCapacity(e.ctx(), 4); err != nil {
		t.Fatal(err)
	}
	after := member()
	if after.Capacity != 4 || after.Lease != before.Lease || after.Labels != labels || after.State != meta.NodeServing {
		t.Fatalf("after SetCapacity(4): %+v (before %+v)", after, before)
	}
	if err := e.node.SetCapacity(e.ctx(), -1); !errors.Is(err, meta.ErrInvalidPlacement) {
		t.Fatalf("SetCapacity(-1) = %v, want ErrInvalidPlacement", err)
	}
	if got := member(); got.Capacity != 4 {
		t.Fatalf("a refused SetCapacity changed the capacity to %v", got.Capacity)
	}
	// The node still serves on the rewritten session.
	e.assign(id, "dml_0")
	e.waitState(id, "dml_0", meta.Watched)
}

func TestCapacityValidated(t *testing.T) {
	store := memkv.New()
	defer store.Close()
	for _, c := range []float64{-1, math.NaN(), math.Inf(1), meta.MaxCapacity + 1} {
		if _, err := nodewatch.New(store, newHandler(t), nodewatch.WithCapacity(c)); !errors.Is(err, nodewatch.ErrInvalidConfig) {
			t.Errorf("WithCapacity(%v): New = %v, want ErrInvalidConfig", c, err)
		}
	}
}
