package channelmgr

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/chanwatch/chanwatch/meta"
)

// The known values of the labelled metrics' labels. Each series exists
// from start, at zero, so an alert can match it (rate() of a series that
// appears with its first increment misses that increment).
var (
	moveReasons     = []string{"balance", "drain", "failover", "watch_timeout", "watch_failure", "deregistered", "duplicate", "corrupt"}
	timeoutKinds    = []string{"watch", "release", "prepare"}
	prepareResults  = []string{"started", "abandoned"}
	txnResults      = []string{"ok", "conflict", "too_large", "error"}
	corruptPrefixes = []string{"registry", "session", "channel", "control", "prepare"}
)

func channelStates() []string {
	out := []string{"remaining", "unassigned"}
	for s := meta.ToWatch; s <= meta.ReleaseFailure; s++ {
		out = append(out, s.String())
	}
	return out
}

// metrics are the coordinator's Prometheus metrics. With no Registerer they
// are still created (and updated) but never exported, so the code has no
// nil checks.
type metrics struct {
	channels *prometheus.GaugeVec // state: ToWatch..ReleaseFailure, remaining, unassigned
	tooLarge prometheus.Gauge
	moves    *prometheus.CounterVec // reason
	placed   prometheus.Counter
	timeouts *prometheus.CounterVec // kind: watch, release, prepare
	// prepares counts warm-handoff prepare requests started and abandoned
	// (a completed one is deleted by its move's placement, not counted).
	prepares   *prometheus.CounterVec // result
	evictions  prometheus.Counter
	fenced     prometheus.Counter
	txns       *prometheus.CounterVec // result: ok, conflict, error
	corrupt    *prometheus.CounterVec // prefix
	leader     prometheus.Gauge
	leaderGain prometheus.Counter
	// quarantined is the live nodes in quarantine or on probation;
	// quarantines counts the times a node was put there.
	quarantined prometheus.Gauge
	quarantines prometheus.Counter
	// pass is the duration of one round of decisions of the leader.
	pass prometheus.Histogram
	// quickPasses counts the quick passes that placed released channels.
	quickPasses prometheus.Counter
	// movesQueued is the planned moves the move budget held back in the
	// leader's last pass.
	movesQueued prometheus.Gauge
	// unplaceable is the channels no serving node may take (constraints).
	unplaceable prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	const ns, sub = "chanwatch", "coordinator"
	m := &metrics{
		channels: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "channels",
			Help: "Registered channels by assignment state as the leader sees them (remaining: in channel/remaining/; unassigned: no key yet)."},
			[]string{"state"}),
		tooLarge: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "channels_too_large",
			Help: "Channels whose next write does not fit in one txn of the backend (MaxTxnBytes, MaxTxnOps): held, not sent; the log names them."}),
		moves: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "moves_started_total",
			Help: "Channels the leader started to take off a node, by reason (balance, drain, failover: the node's session is gone and the channel was written to another node or to remaining at once, " +
				"watch_timeout, watch_failure, deregistered, duplicate, corrupt)."},
			[]string{"reason"}),
		placed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "placements_total",
			Help: "ToWatch assignments written (new channels, moves finished, failover)."}),
		timeouts: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "timeouts_total",
			Help: "ToWatch or ToRelease assignments that timed out, by kind (watch, release)."},
			[]string{"kind"}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "evictions_total",
			Help: "Nodes evicted (session lease revoked) for not releasing in time."}),
		fenced: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "fencing_rejections_total",
			Help: "Write txns rejected because this coordinator no longer holds leadership."}),
		txns: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "txns_total",
			Help: "Write txns by result (ok, conflict: a compare failed, too_large: refused for its size and split, error: no answer)."},
			[]string{"result"}),
		corrupt: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "corrupt_keys_total",
			Help: "Keys skipped because the key or its value does not parse, by prefix (registry, session, channel, control)."},
			[]string{"prefix"}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "is_leader",
			Help: "1 while this coordinator leads."}),
		leaderGain: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "leader_transitions_total",
			Help: "Times this coordinator became leader."}),
		quarantined: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "nodes_quarantined",
			Help: "Live nodes the leader keeps work off because they keep failing (quarantined, or probing with one channel)."}),
		quarantines: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "quarantines_total",
			Help: "Times a node was quarantined (repeated Watch failures or timeouts, a failed Release, a failed probe)."}),
		pass: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "pass_duration_seconds",
			Help:    "Time the leader took for one round of decisions: deciding on its view and writing them (txns included).",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 9)}),
		prepares: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "prepares_total",
			Help: "Warm-handoff prepare requests (nodewatch.Preparer) started, and abandoned (failed, timed out, or the move could no longer complete warm)."}, []string{"result"}),
		quickPasses: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "quick_passes_total",
			Help: "Quick passes: decisions on just the channels a node answered Released for, made as the answer arrives instead of after the fold window."}),
		movesQueued: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "moves_queued",
			Help: "Planned moves (drain, balance) the move budget held back in the leader's last pass (WithMoveBudget, WithNodeMoveLimit); failover is never held."}),
		unplaceable: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "channels_unplaceable",
			Help: "Registered channels that no serving node may take (none has their required labels, or every one that has is quarantined): they wait in channel/remaining/ with the reason in LastError."}),
	}
	for _, v := range channelStates() {
		m.channels.WithLabelValues(v)
	}
	for _, v := range moveReasons {
		m.moves.WithLabelValues(v)
	}
	for _, v := range timeoutKinds {
		m.timeouts.WithLabelValues(v)
	}
	for _, v := range txnResults {
		m.txns.WithLabelValues(v)
	}
	for _, v := range prepareResults {
		m.prepares.WithLabelValues(v)
	}
	for _, v := range corruptPrefixes {
		m.corrupt.WithLabelValues(v)
	}
	if reg == nil {
		return m, nil
	}
	var errs []error
	for _, c := range []prometheus.Collector{m.channels, m.tooLarge, m.moves, m.placed, m.timeouts, m.prepares, m.evictions, m.fenced,
		m.txns, m.corrupt, m.leader, m.leaderGain, m.quarantined, m.quarantines, m.pass, m.quickPasses, m.movesQueued,
		m.unplaceable} {
		errs = append(errs, reg.Register(c))
	}
	return m, errors.Join(errs...)
}
