//go:build linux

package session

import (
	"time"

	"golang.org/x/sys/unix"
)

// bootClock reads CLOCK_BOOTTIME: like the monotonic clock, but it keeps
// counting while the system is suspended.
func bootClock() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return wallClock()
	}
	return time.Duration(ts.Nano())
}
