package conformance

import (
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/chanwatch/chanwatch/audit"
	"github.com/chanwatch/chanwatch/kv"
)

// The invariant checker and handler recorder live in package audit, which
// the CLI links; these names keep the suites' API as it was.
type (
	// Checker is audit.Checker.
	Checker = audit.Checker
	// KeyChange is audit.KeyChange.
	KeyChange = audit.KeyChange
	// Assignment is audit.Assignment.
	Assignment = audit.Assignment
	// View is audit.View.
	View = audit.View
	// Recorder is audit.Recorder.
	Recorder = audit.Recorder
	// RecordingHandler is audit.RecordingHandler.
	RecordingHandler = audit.RecordingHandler
	// PreparingHandler is audit.PreparingHandler.
	PreparingHandler = audit.PreparingHandler
	// HandlerEvent is audit.HandlerEvent.
	HandlerEvent = audit.HandlerEvent
	// HandlerEventKind is audit.HandlerEventKind.
	HandlerEventKind = audit.HandlerEventKind
	// Interval is audit.Interval.
	Interval = audit.Interval
)

// Handler event kinds.
const (
	WatchStart   = audit.WatchStart
	WatchEnd     = audit.WatchEnd
	ReleaseStart = audit.ReleaseStart
	ReleaseEnd   = audit.ReleaseEnd
	PrepareStart = audit.PrepareStart
	PrepareEnd   = audit.PrepareEnd
	UnprepareEnd = audit.UnprepareEnd
)

// ErrInjected is the error the scripted handler failures return.
var ErrInjected = audit.ErrInjected

// NewChecker is audit.NewChecker.
func NewChecker(b kv.Backend, rec *Recorder) *Checker { return audit.NewChecker(b, rec) }

// NewRecorder is audit.NewRecorder.
func NewRecorder(clock clockwork.Clock, tolerance time.Duration) *Recorder {
	return audit.NewRecorder(clock, tolerance)
}
