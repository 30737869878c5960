// Package kvstats is a decorator that adds Prometheus metrics to any
// kv.Backend, once, so that no backend carries its own metric code. It
// changes no behaviour: every call and error passes through unchanged.
package kvstats

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/chanwatch/chanwatch/kv"
)

// Metrics holds the collectors. Register them once per registry with
// NewMetrics and share them between wrapped backends.
type Metrics struct {
	latency *prometheus.HistogramVec
	errs    *prometheus.CounterVec
	events  prometheus.Counter
}

// NewMetrics creates the collectors and registers them on reg (nil: not
// registered). It fails if reg already holds collectors with these names.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "chanwatch", Subsystem: "kv", Name: "op_duration_seconds",
			Help:    "Latency of backend operations by op.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}, []string{"op"}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "chanwatch", Subsystem: "kv", Name: "op_errors_total",
			Help: "Backend operation errors by op and kind.",
		}, []string{"op", "kind"}),
		events: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "chanwatch", Subsystem: "kv", Name: "watch_events_total",
			Help: "Watch events delivered.",
		}),
	}
	// Every op and error kind exists from start, at zero, so alerts and
	// dashboards can match it before the first error.
	for _, op := range ops {
		m.latency.WithLabelValues(op)
		m.errs.WithLabelValues(op, "other")
		for _, k := range errorKinds {
			m.errs.WithLabelValues(op, k.name)
		}
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.latency, m.errs, m.events} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// Wrap returns b with every call measured on m.
func Wrap(b kv.Backend, m *Metrics) kv.Backend { return &backend{b: b, m: m} }

type backend struct {
	b kv.Backend
	m *Metrics
}

func (s *backend) observe(op string, start time.Time, err error) {
	s.m.latency.WithLabelValues(op).Observe(time.Since(start).Seconds())
	if err != nil {
		s.m.errs.WithLabelValues(op, errorKind(err)).Inc()
	}
}

// errorKind names the kv sentinel an error wraps, for a bounded label set.
func errorKind(err error) string {
	for _, k := range errorKinds {
		if errors.Is(err, k.err) {
			return k.name
		}
	}
	return "other"
}

// errorKinds are the kind label's values, "other" aside.
var errorKinds = []struct {
	err  error
	name string
}{
	{kv.ErrKeyNotFound, "not_found"}, {kv.ErrCompacted, "compacted"}, {kv.ErrTxnTooLarge, "txn_too_large"},
	{kv.ErrInvalidTxn, "invalid_txn"}, {kv.ErrLeaseNotFound, "lease_not_found"}, {kv.ErrUnknownOutcome, "unknown_outcome"},
	{kv.ErrUnavailable, "unavailable"}, {kv.ErrClosed, "closed"}, {kv.ErrPermissionDenied, "permission_denied"},
	{context.Canceled, "canceled"}, {context.DeadlineExceeded, "deadline"},
}

// ops are the op label's values.
var ops = []string{"get", "list", "txn", "watch", "grant", "keepalive", "revoke", "ttl", "compact"}

func (s *backend) Get(ctx context.Context, key string) (kv.KeyValue, int64, error) {
	start := time.Now()
	v, rev, err := s.b.Get(ctx, key)
	if errors.Is(err, kv.ErrKeyNotFound) {
		s.observe("get", start, nil) // a miss is an answer, not a failure
	} else {
		s.observe("get", start, err)
	}
	return v, rev, err
}

func (s *backend) List(ctx context.Context, prefix string) ([]kv.KeyValue, int64, error) {
	start := time.Now()
	v, rev, err := s.b.List(ctx, prefix)
	s.observe("list", start, err)
	return v, rev, err
}

// ListPages passes the pages of the wrapped backend through (see
// kv.ListPages), measured as one "list".
func (s *backend) ListPages(ctx context.Context, prefix string, fn func(page []kv.KeyValue, rev int64, restart bool) error) (int64, error) {
	start := time.Now()
	rev, err := kv.ListPages(ctx, s.b, prefix, fn)
	s.observe("list", start, err)
	return rev, err
}

func (s *backend) Txn(ctx context.Context, t kv.Txn) (kv.TxnResponse, error) {
	start := time.Now()
	r, err := s.b.Txn(ctx, t)
	s.observe("txn", start, err)
	return r, err
}

func (s *backend) MaxTxnOps() int { return s.b.MaxTxnOps() }

func (s *backend) MaxTxnBytes() int { return s.b.MaxTxnBytes() }

func (s *backend) Watch(ctx context.Context, prefix string, fromRev int64) kv.WatchChan {
	in := s.b.Watch(ctx, prefix, fromRev)
	out := make(chan kv.WatchResponse)
	go func() {
		defer close(out)
		for r := range in {
			s.m.events.Add(float64(len(r.Events)))
			if r.Err != nil {
				s.m.errs.WithLabelValues("watch", errorKind(r.Err)).Inc()
			}
			select {
			case out <- r:
			case <-ctx.Done():
				// Drain so the inner watch can finish once ctx is done.
				for range in {
				}
				return
			}
		}
	}()
	return out
}

func (s *backend) Grant(ctx context.Context, ttl time.Duration) (kv.LeaseID, error) {
	start := time.Now()
	id, err := s.b.Grant(ctx, ttl)
	s.observe("grant", start, err)
	return id, err
}

func (s *backend) KeepAliveOnce(ctx context.Context, id kv.LeaseID) (time.Duration, error) {
	start := time.Now()
	ttl, err := s.b.KeepAliveOnce(ctx, id)
	s.observe("keepalive", start, err)
	return ttl, err
}

func (s *backend) Revoke(ctx context.Context, id kv.LeaseID) error {
	start := time.Now()
	err := s.b.Revoke(ctx, id)
	s.observe("revoke", start, err)
	return err
}

func (s *backend) TimeToLive(ctx context.Context, id kv.LeaseID) (time.Duration, error) {
	start := time.Now()
	ttl, err := s.b.TimeToLive(ctx, id)
	s.observe("ttl", start, err)
	return ttl, err
}

func (s *backend) Compact(ctx context.Context, rev int64) error {
	start := time.Now()
	err := s.b.Compact(ctx, rev)
	s.observe("compact", start, err)
	return err
}

func (s *backend) Close() error { return s.b.Close() }

// ErrorCounter returns the error counter for op and kind (for tests and
// dashboards that want one series).
func (m *Metrics) ErrorCounter(op, kind string) prometheus.Counter {
	return m.errs.WithLabelValues(op, kind)
}
