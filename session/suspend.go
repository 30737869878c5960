package session

import "time"

// wallClock is the wall clock as a duration since the Unix epoch, with no
// monotonic reading: it keeps counting through a system suspend.
func wallClock() time.Duration { return time.Duration(time.Now().UnixNano()) }

// WithSuspendClock sets the clock the session cross-checks its fence
// deadline against: one that keeps counting while the process or the system
// is suspended, which Go's monotonic clock (behind every timer) does not on
// Linux. The default is CLOCK_BOOTTIME on Linux (the wall clock elsewhere)
// when the session runs on the real clock, and none on any other clock (a
// fake clock in a test): the deadline is then checked on that clock alone.
// f returns a reading in any epoch; only differences count. nil disables
// the check.
func WithSuspendClock(f func() time.Duration) Option {
	return func(c *config) { c.suspend, c.suspendSet = f, true }
}

// suspendPoll is how often a session on the real clock reads its suspend
// clock: after a resume it fences within this long, not at its next
// keep-alive.
func suspendPoll(margin time.Duration) time.Duration {
	return min(max(margin/4, 10*time.Millisecond), time.Second)
}
