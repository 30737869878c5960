package channelmgr

import (
	"testing"

	"go.uber.org/goleak"
)

// Every coordinator, session, watch and fake node a test starts is gone
// when the test ends.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
