package kvstats_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/kvstats"
	"github.com/chanwatch/chanwatch/kv/memkv"
)

func TestWrapCountsOpsAndErrors(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := kvstats.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	mem := memkv.New()
	b := kvstats.Wrap(mem, m)
	defer b.Close()
	ctx := context.Background()

	ch := b.Watch(ctx, "a/", 0)
	rev, err := kv.Put(ctx, b, "a/1", []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Get(ctx, "missing"); !errors.Is(err, kv.ErrKeyNotFound) {
		t.Fatalf("Get missing: %v", err)
	}
	big := make([]kv.Op, b.MaxTxnOps()+1)
	for i := range big {
		big[i] = kv.OpDelete("k")
	}
	if _, err := b.Txn(ctx, kv.Txn{Then: big}); !errors.Is(err, kv.ErrTxnTooLarge) {
		t.Fatalf("big txn: %v", err)
	}
	select {
	case r := <-ch:
		if len(r.Events) != 1 || r.Events[0].Revision() != rev {
			t.Fatalf("watch passed %+v, want one event at %d", r, rev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no watch event")
	}
	if got := testutil.ToFloat64(m.ErrorCounter("txn", "txn_too_large")); got != 1 {
		t.Fatalf("txn_too_large errors = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.ErrorCounter("get", "not_found")); got != 0 {
		t.Fatalf("a Get miss counted as an error: %v", got)
	}
	if n := testutil.CollectAndCount(reg, "chanwatch_kv_op_duration_seconds"); n < 2 {
		t.Fatalf("latency series = %d, want >= 2 (get, txn)", n)
	}
	if _, err := kvstats.NewMetrics(reg); err == nil {
		t.Fatal("registering twice on one registry succeeded")
	}
}

// pagedKV is a backend that is a kv.Pager: two pages per List.
type pagedKV struct {
	kv.Backend
	pages int
}

func (p *pagedKV) ListPages(ctx context.Context, prefix string, fn func([]kv.KeyValue, int64, bool) error) (int64, error) {
	kvs, rev, err := p.List(ctx, prefix)
	if err != nil {
		return 0, err
	}
	half := len(kvs) / 2
	for _, page := range [][]kv.KeyValue{kvs[:half], kvs[half:]} {
		p.pages++
		if err := fn(page, rev, false); err != nil {
			return 0, err
		}
	}
	return rev, nil
}

// The wrapper passes a Pager's pages through, and a backend that is not
// one still reads as a single page.
func TestWrapPassesPagesThrough(t *testing.T) {
	ctx := context.Background()
	m, err := kvstats.NewMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, paged := range []bool{false, true} {
		var inner kv.Backend = memkv.New()
		pk := &pagedKV{Backend: inner}
		if paged {
			inner = pk
		}
		b := kvstats.Wrap(inner, m)
		for _, k := range []string{"p/1", "p/2", "p/3", "p/4"} {
			if _, err := kv.Put(ctx, b, k, []byte("x")); err != nil {
				t.Fatal(err)
			}
		}
		var calls, keys int
		if _, err := kv.ListPages(ctx, b, "p/", func(page []kv.KeyValue, _ int64, _ bool) error {
			calls++
			keys += len(page)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		want := 1
		if paged {
			want = 2
		}
		if calls != want || keys != 4 || (paged && pk.pages != 2) {
			t.Errorf("paged=%v: %d pages with %d keys (inner pages %d), want %d pages with 4 keys", paged, calls, keys, pk.pages, want)
		}
		b.Close()
	}
}
