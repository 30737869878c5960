package nodewatch_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jonboulle/clockwork"

	"github.com/chanwatch/chanwatch/kv/memkv"
	"github.com/chanwatch/chanwatch/meta"
	"github.com/chanwatch/chanwatch/nodewatch"
)

// newEnvStore is newEnv on a store built with storeOpts.
func newEnvStore(t *testing.T, storeOpts ...memkv.Option) *env {
	t.Helper()
	clock := clockwork.NewFakeClock()
	store := memkv.New(append([]memkv.Option{memkv.WithClock(clock)}, storeOpts...)...)
	e := &env{t: t, store: store, client: store.NewClient(), clock: clock, h: newHandler(t)}
	t.Cleanup(func() { _ = store.Close() })
	n, err := nodewatch.New(e.client, e.h, nodewatch.WithClock(clock), nodewatch.WithSessionTTL(longTTL),
		nodewatch.WithProgressInterval(progressEvery))
	if err != nil {
		t.Fatal(err)
	}
	e.node = n
	return e
}

// TestHugeHandlerErrorTruncated: a Watch error of 4 MiB (over etcd's and
// memkv's 1.5 MiB request limit) lands in LastError truncated to
// meta.MaxErrorLen with a marker that counts what was cut, and the
// WatchFailure ack is written.
func TestHugeHandlerErrorTruncated(t *testing.T) {
	e := newEnv(t)
	huge := strings.Repeat("x", 4<<20)
	e.h.watch = func(context.Context, meta.ChannelInfo) error { return errors.New(huge) }
	id := e.start()
	e.assign(id, "dml_0")
	info, _ := e.waitState(id, "dml_0", meta.WatchFailure)
	if len(info.LastError) > meta.MaxErrorLen {
		t.Fatalf("LastError is %d bytes, max %d", len(info.LastError), meta.MaxErrorLen)
	}
	head, _, ok := strings.Cut(info.LastError, "…[truncated ")
	if !ok || !strings.HasPrefix(huge, head) || len(head) == 0 {
		t.Fatalf("LastError has no truncation marker: ...%q", info.LastError[max(0, len(info.LastError)-60):])
	}
	if want := fmt.Sprintf("…[truncated %d bytes]", len(huge)-len(head)); !strings.HasSuffix(info.LastError, want) {
		t.Fatalf("LastError ends %q, want %q", info.LastError[len(head):], want)
	}
}

// TestAckTooLargeNotResentUnchanged: on a store whose MaxTxnBytes takes the
// ToWatch value but not the ack with a 4 KiB error text (JSON-escaped to
// 24 KiB), the node does not resend the refused ack: it drops the error
// text and the WatchFailure lands.
func TestAckTooLargeNotResentUnchanged(t *testing.T) {
	vch := []byte(`{"seek":"` + strings.Repeat("v", 16<<10) + `"}`)
	e := newEnvStore(t, memkv.WithMaxTxnBytes(24<<10))
	e.h.watch = func(context.Context, meta.ChannelInfo) error {
		return errors.New(strings.Repeat("<", 8<<10)) // each '<' is escaped as \u003c
	}
	id := e.start()
	e.put(id, meta.ChannelInfo{Name: "dml_0", State: meta.ToWatch, StartTime: e.clock.Now(), Vchannel: vch})
	info, _ := e.waitState(id, "dml_0", meta.WatchFailure)
	if !strings.Contains(info.LastError, "error text dropped") {
		t.Fatalf("LastError %q: want the dropped-text marker", info.LastError[:min(len(info.LastError), 80)])
	}
	if string(info.Vchannel) != string(vch) {
		t.Fatalf("the ack lost the Vchannel payload")
	}
}
