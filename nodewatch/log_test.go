package nodewatch_test

import (
	"context"
	"slices"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/nodewatch"
)

// TestOneInfoLinePerReportedState: per-channel lines are at debug, but for
// one info line for each state change the node reports (Watched,
// WatchFailure, Released, ReleaseFailure).
func TestOneInfoLinePerReportedState(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	e := newEnv(t, nodewatch.WithLogger(zap.New(core)))
	failWatch, failRelease := false, false
	e.h.watch = func(context.Context, meta.ChannelInfo) error {
		e.h.mu.Lock()
		defer e.h.mu.Unlock()
		if failWatch {
			return errBoom
		}
		return nil
	}
	e.h.release = func(context.Context, string) error {
		e.h.mu.Lock()
		defer e.h.mu.Unlock()
		if failRelease {
			return errBoom
		}
		return nil
	}
	set := func(w, r bool) {
		e.h.mu.Lock()
		failWatch, failRelease = w, r
		e.h.mu.Unlock()
	}
	id := e.start()
	e.assign(id, "a")
	e.waitState(id, "a", meta.Watched)
	set(false, true)
	e.toRelease(id, "a")
	e.waitState(id, "a", meta.ReleaseFailure)
	set(false, false)
	e.toRelease(id, "a")
	e.waitState(id, "a", meta.Released)
	e.del(id, "a")
	set(true, false)
	e.assign(id, "b")
	e.waitState(id, "b", meta.WatchFailure)
	eventually(t, func() bool { return e.h.released("b") == 1 }, waitFor, "Release after the failed Watch")
	e.stop()

	var got []string
	for _, l := range logs.All() {
		if _, ok := l.ContextMap()["channel"]; ok {
			got = append(got, l.Level.String()+" "+l.Message+" "+l.ContextMap()["state"].(string))
		}
	}
	want := []string{
		"info channel watched Watched",
		"info channel release failed ReleaseFailure",
		"info channel released Released",
		"info channel watch failed WatchFailure",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("per-channel lines at info and above:\n%q\nwant\n%q", got, want)
	}
}
