//go:build !linux

package session

import "time"

// bootClock falls back to the wall clock where CLOCK_BOOTTIME does not
// exist: it keeps counting through a suspend, but can also be stepped.
func bootClock() time.Duration { return wallClock() }
