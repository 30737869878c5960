package raftkv

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves goroutines behind: every
// node a test opens must be closed with all of its goroutines.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
