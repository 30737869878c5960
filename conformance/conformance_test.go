package conformance_test

import (
	"errors"
	"testing"

	"github.com/jonboulle/clockwork"

	"github.com/chanwatch/chanwatch/conformance"
	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/memkv"
)

func TestKV(t *testing.T) {
	t.Run("mem", func(t *testing.T) { conformance.RunKV(t, memFactory) })
}

// memFactory gives each scenario a fresh in-memory store on a fake clock.
// The store's first handle stays with the factory; Open hands out more.
func memFactory(t testing.TB) conformance.Env {
	clock := clockwork.NewFakeClock()
	store := memkv.New(memkv.WithClock(clock))
	t.Cleanup(func() { closeHandle(t, store) })
	return conformance.Env{
		Open: func(t testing.TB) kv.Backend {
			c := store.NewClient()
			t.Cleanup(func() { closeHandle(t, c) })
			return c
		},
		Clock: clock,
	}
}

// closeHandle closes b at cleanup; scenarios may have closed it already.
func closeHandle(t testing.TB, b kv.Backend) {
	if err := b.Close(); err != nil && !errors.Is(err, kv.ErrClosed) {
		t.Errorf("close: %v", err)
	}
}

