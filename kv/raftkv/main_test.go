package raftkv

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves goroutines behind: every
// node a test opens must be closed with all of its goroutines. One kind is
// raft's, not ours to end: raft v1.7 queues VerifyLeader futures in a
// buffered channel and never answers those still queued when it shuts
// down, so the goroutine waiting on such a future (waitVerify) stays.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/hashicorp/raft.(*deferError).Error"))
}
