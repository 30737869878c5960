package chaos

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// scale picks the short or the long (chaos tag) value of a parameter.
func scale[T any](short, lng T) T {
	if long {
		return lng
	}
	return short
}

// report collects one test's figures and history. Every test makes one
// with newReport; at the end it prints the figure line and, when the test
// failed, writes the history to a report directory.
type report struct {
	t     *testing.T
	start time.Time

	mu         sync.Mutex
	faults     int
	violations []string
	lost       int
	skipDup    int
	reconv     float64 // worst time to reconverge, in lease TTLs
	timeline   []string
	files      map[string][]byte
	logs       map[string]*lockedBuffer
	extra      []string // extra key=value figures
}

func newReport(t *testing.T) *report {
	r := &report{t: t, start: time.Now(), files: map[string][]byte{}, logs: map[string]*lockedBuffer{}}
	t.Cleanup(r.finish)
	return r
}

func (r *report) stamp() string {
	return fmt.Sprintf("%8.3fs", time.Since(r.start).Seconds())
}

// fault records an injected fault in the timeline and counts it.
func (r *report) fault(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.faults++
	r.timeline = append(r.timeline, r.stamp()+" FAULT "+fmt.Sprintf(format, args...))
}

// note records a line of history.
func (r *report) note(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.timeline = append(r.timeline, r.stamp()+" "+fmt.Sprintf(format, args...))
}

// violate records an invariant violation; the test fails at the end (and
// keeps running, so that the history shows what followed).
func (r *report) violate(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.violations = append(r.violations, msg)
	r.timeline = append(r.timeline, r.stamp()+" VIOLATION "+msg)
}

func (r *report) addLost(n int) {
	r.mu.Lock()
	r.lost += n
	r.mu.Unlock()
}

func (r *report) addSkipDup(n int) {
	r.mu.Lock()
	r.skipDup += n
	r.mu.Unlock()
}

// reconverged records a time to reconverge after faults healed.
func (r *report) reconverged(d, ttl time.Duration) {
	x := float64(d) / float64(ttl)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.timeline = append(r.timeline, fmt.Sprintf("%s reconverged in %v (%.2fxTTL)", r.stamp(), d.Round(time.Millisecond), x))
	if x > r.reconv {
		r.reconv = x
	}
}

// figure adds a test-specific key=value to the figure line.
func (r *report) figure(key string, value any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.extra = append(r.extra, fmt.Sprintf("%s=%v", key, value))
}

// attach keeps a file for the failure report.
func (r *report) attach(name string, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.files[name] = data
}

func (r *report) violationCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.violations)
}

func (r *report) finish() {
	r.mu.Lock()
	for _, v := range r.violations {
		r.t.Errorf("invariant violated: %s", v)
	}
	if r.lost > 0 {
		r.t.Errorf("%d channel(s) lost", r.lost)
	}
	if r.skipDup > 0 {
		r.t.Errorf("%d watch event(s) skipped or duplicated", r.skipDup)
	}
	line := fmt.Sprintf("FIGURE %s: faults=%d violations=%d lost=%d skipped_or_dup=%d reconverge=%.2fxTTL",
		r.t.Name(), r.faults, len(r.violations), r.lost, r.skipDup, r.reconv)
	if len(r.extra) > 0 {
		line += " " + strings.Join(r.extra, " ")
	}
	failed := r.t.Failed()
	timeline := strings.Join(r.timeline, "\n") + "\n"
	files := r.files
	logs := r.logs
	r.mu.Unlock()
	// The figure line goes to stdout, where `go test -v` (make chaos) shows
	// it on a line of its own.
	fmt.Println(line)
	if !failed && os.Getenv("CHANWATCH_KEEP_REPORT") == "" {
		return
	}
	dir := reportDir(r.t)
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			r.t.Logf("report: %v", err)
		}
	}
	write("figures.txt", []byte(line+"\n"))
	write("timeline.txt", []byte(timeline))
	for name, data := range files {
		write(name, data)
	}
	for name, buf := range logs {
		write(name, buf.bytes())
	}
	if st, ok := stacksAtFailure.LoadAndDelete(r.t); ok {
		write("goroutines-at-timeout.txt", st.([]byte))
	}
	buf := make([]byte, 1<<20)
	write("goroutines.txt", buf[:runtime.Stack(buf, true)])
	r.t.Logf("report written to %s", dir)
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// reportDir is $CHANWATCH_REPORT_DIR/<test>, or a fresh directory under
// os.TempDir() (kept after the test, unlike t.TempDir).
func reportDir(t *testing.T) string {
	name := unsafeName.ReplaceAllString(t.Name(), "_")
	base := os.Getenv("CHANWATCH_REPORT_DIR")
	if base == "" {
		d, err := os.MkdirTemp("", "chanwatch-chaos-"+name+"-")
		if err != nil {
			t.Logf("report dir: %v", err)
			return os.TempDir()
		}
		return d
	}
	d := filepath.Join(base, name)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Logf("report dir: %v", err)
	}
	return d
}

// seed returns the seed of a test's random choices: $CHANWATCH_SEED or the
// clock, logged so that a failing run can be repeated.
func seed(t *testing.T) uint64 {
	s := uint64(time.Now().UnixNano())
	if v := os.Getenv("CHANWATCH_SEED"); v != "" {
		if _, err := fmt.Sscan(v, &s); err != nil {
			t.Fatalf("CHANWATCH_SEED=%q: %v", v, err)
		}
	}
	t.Logf("seed %d (set CHANWATCH_SEED to repeat)", s)
	return s
}

func newRand(t *testing.T) *rand.Rand {
	s := seed(t)
	return rand.New(rand.NewPCG(s, s^0x9e3779b97f4a7c15))
}

// eventually polls cond every 5ms until it holds, failing the test with
// what if it has not within liveWithin(d). d is what the protocol promises;
// a wait that only made it in the slack is logged as slow, not failed: on a
// loaded machine (make test-load) processes are descheduled for seconds.
// Only liveness waits use it; checks that something must not happen
// (poll's negative uses) keep their exact bounds.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	start := time.Now()
	within := liveWithin(d)
	if !poll(within, cond) {
		keepStacks(t)
		t.Fatalf("timed out after %v (%v promised, with load slack) waiting for %s", within, d, what)
	}
	if took := time.Since(start); took > d {
		t.Logf("slow: %s took %v, promised within %v (a loaded machine?)", what, took.Round(time.Millisecond), d)
	}
}

// loadSlack is what a liveness wait adds to its promised bound, for a
// machine whose cores are busy with other work.
const loadSlack = 30 * time.Second

// liveWithin is how long a liveness wait promised within d may take before
// it fails.
func liveWithin(d time.Duration) time.Duration { return d + max(d, loadSlack) }

// stacksAtFailure holds, per test, every goroutine's stack taken when a
// wait timed out: by the time the report is written, the test's deferred
// stops have ended the goroutines that were stuck.
var stacksAtFailure sync.Map // testing.TB -> []byte

func keepStacks(t testing.TB) {
	buf := make([]byte, 4<<20)
	stacksAtFailure.Store(t, buf[:runtime.Stack(buf, true)])
}

// logger returns a debug-level JSON logger whose lines go to the failure
// report (as <name>.log), never to the test output.
func (r *report) logger(name string) *zap.Logger {
	buf := &lockedBuffer{}
	r.mu.Lock()
	r.logs[name+".log"] = buf
	r.mu.Unlock()
	enc := zapcore.NewJSONEncoder(zap.NewDevelopmentEncoderConfig())
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(buf), zapcore.DebugLevel)).Named(name)
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]byte(nil), b.buf.Bytes()...)
}

// poll polls cond every 5ms until it holds (true) or d passes (false).
func poll(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}

// testCtx is a context cancelled when the test ends.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return ctx
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// parallelShort runs the store tests of the short version in parallel with
// each other (they check safety, not timing); the long version runs
// everything one at a time, so that faults are not blurred by load.
func parallelShort(t *testing.T) {
	if !long {
		t.Parallel()
	}
}
