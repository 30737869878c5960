package channelmgr

import "time"

// timer is the timeout of a ToWatch or ToRelease key, armed when we first
// saw its mod revision. It belongs to that (key, mod revision): a watch
// resume or a re-list keeps it, and only a write to the key (an answer, a
// progress bump) replaces it.
type timer struct {
	rev      int64
	armed    time.Time
	deadline time.Time
	d        time.Duration // the timeout it was armed with
	credit   time.Duration // outage time added back to deadline, at most d
}

// expired arms the timer of key at rev (timeout d) if it is not armed for
// that revision yet, and reports whether it expired. A deadline never fires
// while the view is stale (the watch is down: an answer may be unseen);
// once the view is fresh again, a deadline that passed meanwhile fires.
func (r *reconciler) expired(key string, rev int64, d time.Duration, now time.Time) bool {
	t, ok := r.timers[key]
	if !ok || t.rev != rev {
		r.timers[key] = timer{rev: rev, armed: now, deadline: now.Add(d), d: d}
		r.wakeAt(now.Add(d), now)
		return false
	}
	if now.Before(t.deadline) {
		r.wakeAt(t.deadline, now)
		return false
	}
	return r.watchOK
}

// wakeAt asks for a pass at t (on the reconciler's clock), when a decision
// put off until then becomes due: without it, the decision waited for the
// next check interval tick, up to a second late (a gone node's channels
// moved up to a second after the node TTL). Times not after now, and
// never, are ignored.
func (r *reconciler) wakeAt(t, now time.Time) {
	if !t.After(now) || t.Equal(never) {
		return
	}
	if r.wake.IsZero() || t.Before(r.wake) {
		r.wake = t
	}
}

// viewStale records that the watch broke: from now on the view may miss
// answers, so no deadline fires until viewFresh.
func (r *reconciler) viewStale(now time.Time) {
	r.watchOK = false
	if r.staleSince.IsZero() {
		r.staleSince = now
	}
}

// viewFresh records that the watch runs again from the view's revision.
// The outage is credited back to every armed deadline (the node may have
// been cut off from the store too, unable to answer or report progress),
// but never more than one timeout per (key, revision) in all: repeated
// outages cannot postpone a deadline forever, and a deadline fires at the
// latest 2 timeouts after it was armed, on the first pass with a fresh view.
func (r *reconciler) viewFresh(now time.Time) {
	r.watchOK = true
	since := r.staleSince
	r.staleSince = time.Time{}
	if since.IsZero() {
		return
	}
	for key, t := range r.timers {
		from := since
		if t.armed.After(from) {
			from = t.armed
		}
		add := min(now.Sub(from), t.d-t.credit)
		if add <= 0 {
			continue
		}
		t.credit += add
		t.deadline = t.deadline.Add(add)
		r.timers[key] = t
	}
}
