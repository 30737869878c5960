package conformance

import (
	"errors"
	"testing"
	"time"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/stretchr/testify/require"
)

// leaseTTL is the TTL the lease scenarios grant when they want a lease to
// expire: etcd's minimum with fast raft timers, instant on a fake clock.
const leaseTTL = time.Second

// RunKVLease checks leases: validation, expiry, keep-alive, revoke and
// time-to-live.
func RunKVLease(t *testing.T, f Factory) {
	runScenarios(t, f, []scenario{
		{"InvalidTTL", leaseInvalidTTL},
		{"UnknownLease", leaseUnknown},
		{"ExpiryDeletesKeys", leaseExpiryDeletes},
		{"KeepAlivePreventsExpiry", leaseKeepAlive},
		{"RevokeDeletesAtOnce", leaseRevoke},
		{"TimeToLive", leaseTimeToLive},
		{"PutWithoutLeaseDetaches", leaseDetach},
	})
}

// grant grants a lease of ttl and revokes it when the test ends, so that it
// cannot expire into a later scenario's revisions on a shared server.
func grant(t *testing.T, s *sc, ttl time.Duration) kv.LeaseID {
	t.Helper()
	id, err := s.b.Grant(s.ctx, ttl)
	require.NoError(t, err, "grant %v", ttl)
	b := s.env.Open(t) // closed after the revoke below (cleanups run last-in first-out)
	t.Cleanup(func() {
		ctx, cancel := cleanupContext()
		defer cancel()
		if err := b.Revoke(ctx, id); err != nil && !errors.Is(err, kv.ErrLeaseNotFound) {
			t.Errorf("revoke lease %x at cleanup: %v", id, err)
		}
	})
	return id
}

// expire lets lease id run out without keep-alives and waits until it has
// deleted probe, one of its keys. On a fake clock it advances time by the
// TTL and keeps nudging it while it polls; on a real clock it only polls.
func expire(t *testing.T, s *sc, id kv.LeaseID, probe string) {
	t.Helper()
	if isFakeClock(s.env) {
		passTime(t, s.env, leaseTTL)
	}
	eventually(t, nudger(s.env, leaseTTL/4), func() bool {
		_, _, err := s.b.Get(s.ctx, probe)
		return errors.Is(err, kv.ErrKeyNotFound)
	}, "lease %x expires and deletes %q", id, probe)
}

func leaseInvalidTTL(t *testing.T, s *sc) {
	for _, ttl := range []time.Duration{0, -time.Second, -1} {
		_, err := s.b.Grant(s.ctx, ttl)
		require.ErrorIs(t, err, kv.ErrInvalidTTL, "Grant(%v)", ttl)
	}
	// A short but positive TTL is granted, at least as long as asked.
	id := grant(t, s, 300*time.Millisecond)
	ttl, err := s.b.KeepAliveOnce(s.ctx, id)
	require.NoError(t, err)
	require.GreaterOrEqual(t, ttl, 300*time.Millisecond, "the granted TTL is at least the requested one")
}

func leaseUnknown(t *testing.T, s *sc) {
	revoked, err := s.b.Grant(s.ctx, time.Minute)
	require.NoError(t, err)
	require.NoError(t, s.b.Revoke(s.ctx, revoked))
	for _, id := range []kv.LeaseID{revoked, kv.LeaseID(0x5eed_0000_dead_beef)} {
		_, err := s.b.KeepAliveOnce(s.ctx, id)
		require.ErrorIs(t, err, kv.ErrLeaseNotFound, "KeepAliveOnce(%x)", id)
		err = s.b.Revoke(s.ctx, id)
		require.ErrorIs(t, err, kv.ErrLeaseNotFound, "Revoke(%x)", id)
		_, err = s.b.TimeToLive(s.ctx, id)
		require.ErrorIs(t, err, kv.ErrLeaseNotFound, "TimeToLive(%x)", id)
	}
}

func leaseExpiryDeletes(t *testing.T, s *sc) {
	id := grant(t, s, leaseTTL)
	resp := txn(t, s.ctx, s.b, kv.Txn{Then: []kv.Op{
		kv.OpPutLease("le/a", []byte("1"), id),
		kv.OpPutLease("le/b", []byte("2"), id),
		kv.OpPut("le/plain", []byte("3")),
	}})
	require.Equal(t, id, get(t, s.ctx, s.b, "le/a").Lease, "a leased key reports its lease")
	require.Equal(t, kv.NoLease, get(t, s.ctx, s.b, "le/plain").Lease)

	if isFakeClock(s.env) {
		// Half the TTL is not enough.
		passTime(t, s.env, leaseTTL/2)
		require.Equal(t, "1", string(get(t, s.ctx, s.b, "le/a").Value), "a lease must not expire before its TTL")
	}
	expire(t, s, id, "le/a")
	requireMissing(t, s.ctx, s.b, "le/b")
	require.Equal(t, "3", string(get(t, s.ctx, s.b, "le/plain").Value), "a key without the lease stays")
	require.Equal(t, resp.Revision+1, currentRevision(t, s.ctx, s.b), "the expiry deletes both keys in one revision")

	_, err := s.b.KeepAliveOnce(s.ctx, id)
	require.ErrorIs(t, err, kv.ErrLeaseNotFound, "an expired lease is gone")
	_, err = s.b.TimeToLive(s.ctx, id)
	require.ErrorIs(t, err, kv.ErrLeaseNotFound, "an expired lease is gone")
	_, err = s.b.Txn(s.ctx, kv.Txn{Then: []kv.Op{kv.OpPutLease("le/a", nil, id)}})
	require.ErrorIs(t, err, kv.ErrLeaseNotFound, "a put on an expired lease")
}

func leaseKeepAlive(t *testing.T, s *sc) {
	id := grant(t, s, leaseTTL)
	resp := txn(t, s.ctx, s.b, kv.Txn{Then: []kv.Op{kv.OpPutLease("lk/a", []byte("1"), id)}})
	full, err := s.b.KeepAliveOnce(s.ctx, id)
	require.NoError(t, err)
	require.GreaterOrEqual(t, full, leaseTTL)

	// Renew every quarter TTL for more than two TTLs.
	step := full / 4
	for passed := time.Duration(0); passed <= 2*full+step; passed += step {
		passTime(t, s.env, step)
		ttl, err := s.b.KeepAliveOnce(s.ctx, id)
		require.NoError(t, err, "keep-alive after %v", passed+step)
		require.Equal(t, full, ttl, "KeepAliveOnce renews to the full TTL")
		// etcd reports whole seconds, so a live 1s lease may show 0 left.
		left, err := s.b.TimeToLive(s.ctx, id)
		require.NoError(t, err, "the lease lives after %v", passed+step)
		require.GreaterOrEqual(t, left, time.Duration(0))
		require.LessOrEqual(t, left, full)
	}
	item := get(t, s.ctx, s.b, "lk/a")
	require.Equal(t, resp.Revision, item.ModRevision, "a kept-alive key is untouched")
	require.Equal(t, id, item.Lease)
}

func leaseRevoke(t *testing.T, s *sc) {
	id := grant(t, s, time.Minute)
	r := txn(t, s.ctx, s.b, kv.Txn{Then: []kv.Op{
		kv.OpPutLease("lr/a", []byte("1"), id),
		kv.OpPutLease("lr/b", []byte("2"), id),
		kv.OpPut("lr/c", []byte("3")),
	}})
	w := startWatch(t, s.ctx, s.b, "lr/", r.Revision+1)
	require.NoError(t, s.b.Revoke(s.ctx, id))

	// At once: no waiting for the deletes.
	items, rev, err := s.b.List(s.ctx, "lr/")
	require.NoError(t, err)
	require.Equal(t, []string{"lr/c"}, keysOf(items), "Revoke deletes the lease's keys before it returns")
	require.Equal(t, r.Revision+1, rev, "in one revision")
	resp := w.response()
	require.NoError(t, resp.Err)
	require.ElementsMatch(t, []evt{delEvt("lr/a", rev), delEvt("lr/b", rev)}, digest(resp.Events))

	err = s.b.Revoke(s.ctx, id)
	require.ErrorIs(t, err, kv.ErrLeaseNotFound, "a second revoke")
	_, err = s.b.KeepAliveOnce(s.ctx, id)
	require.ErrorIs(t, err, kv.ErrLeaseNotFound, "keep-alive after revoke")

	// Revoking a lease with no keys writes nothing.
	empty := grant(t, s, time.Minute)
	require.NoError(t, s.b.Revoke(s.ctx, empty))
	require.Equal(t, rev, currentRevision(t, s.ctx, s.b), "revoking a lease without keys does not advance the revision")
}

func leaseTimeToLive(t *testing.T, s *sc) {
	const ttl = 5 * time.Second
	id := grant(t, s, ttl)
	full, err := s.b.KeepAliveOnce(s.ctx, id)
	require.NoError(t, err)
	require.GreaterOrEqual(t, full, ttl)
	left1, err := s.b.TimeToLive(s.ctx, id)
	require.NoError(t, err)
	require.Greater(t, left1, time.Duration(0))
	require.LessOrEqual(t, left1, full, "TimeToLive <= TTL")

	passTime(t, s.env, time.Second)
	left2, err := s.b.TimeToLive(s.ctx, id)
	require.NoError(t, err)
	require.Less(t, left2, left1, "TimeToLive goes down as time passes")
	require.Greater(t, left2, time.Duration(0))

	_, err = s.b.KeepAliveOnce(s.ctx, id)
	require.NoError(t, err)
	left3, err := s.b.TimeToLive(s.ctx, id)
	require.NoError(t, err)
	require.Greater(t, left3, left2, "a keep-alive restores the TTL")
	require.LessOrEqual(t, left3, full)
}

func leaseDetach(t *testing.T, s *sc) {
	id := grant(t, s, time.Minute)
	txn(t, s.ctx, s.b, kv.Txn{Then: []kv.Op{
		kv.OpPutLease("ld/moved", []byte("1"), id),
		kv.OpPutLease("ld/stays", []byte("1"), id),
	}})
	// A put without a lease takes the key off the lease.
	put(t, s.ctx, s.b, "ld/moved", "2")
	require.Equal(t, kv.NoLease, get(t, s.ctx, s.b, "ld/moved").Lease)
	// A put onto another lease moves it.
	other := grant(t, s, time.Minute)
	txn(t, s.ctx, s.b, kv.Txn{Then: []kv.Op{kv.OpPutLease("ld/other", []byte("1"), id)}})
	txn(t, s.ctx, s.b, kv.Txn{Then: []kv.Op{kv.OpPutLease("ld/other", []byte("2"), other)}})
	require.Equal(t, other, get(t, s.ctx, s.b, "ld/other").Lease)

	require.NoError(t, s.b.Revoke(s.ctx, id))
	items, _, err := s.b.List(s.ctx, "ld/")
	require.NoError(t, err)
	require.Equal(t, []string{"ld/moved", "ld/other"}, keysOf(items), "revoke deletes only the keys still on the lease")
}
