package meta

import (
	"errors"
	"testing"
)

// FuzzDecodeChannelInfo: any bytes either decode into a valid ChannelInfo
// that re-encodes and decodes to the same state, or fail with
// ErrCorruptValue; never a panic.
func FuzzDecodeChannelInfo(f *testing.F) {
	f.Add([]byte(`{"v":1,"name":"c","state":"ToWatch"}`))
	f.Add([]byte(`{"v":1,"name":"c","state":"Complete","assign_rev":4}`))
	f.Add([]byte(`{"v":1,"name":"c","state":"Watched","vchannel":{"x":[1,2]}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeChannelInfo("channel/1/c", b)
		if err != nil {
			if !errors.Is(err, ErrCorruptValue) {
				t.Fatalf("error %v does not wrap ErrCorruptValue", err)
			}
			return
		}
		enc, err := EncodeChannelInfo(c)
		if err != nil {
			t.Fatalf("decoded value %+v does not re-encode: %v", c, err)
		}
		c2, err := DecodeChannelInfo("channel/1/c", enc)
		if err != nil || c2.State != c.State || c2.Name != c.Name || c2.AssignRevision != c.AssignRevision {
			t.Fatalf("re-decode: %+v, %v; want %+v", c2, err, c)
		}
	})
}

// FuzzParseChannelKey: a key parses only into parts that format back to it.
func FuzzParseChannelKey(f *testing.F) {
	for _, k := range []string{"channel/1/c", "channel/remaining/c", "channel/12/a/b", "channel/x/c", "channel/0/c"} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		id, ch, err := ParseChannelKey(key)
		if err != nil {
			if !errors.Is(err, ErrBadKey) {
				t.Fatalf("error %v does not wrap ErrBadKey", err)
			}
			return
		}
		if got := ChannelKey(id, ch); got != key {
			t.Fatalf("ParseChannelKey(%q) = %d,%q which formats as %q", key, id, ch, got)
		}
	})
}

// FuzzParseRegistryKey: a registry key parses only into a valid channel
// that formats back to it.
func FuzzParseRegistryKey(f *testing.F) {
	for _, k := range []string{"registry/c", "registry/", "registry/a/b", "registr/c", "registry/" + string([]byte{0xff})} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		ch, err := ParseRegistryKey(key)
		if err != nil {
			if !errors.Is(err, ErrBadKey) {
				t.Fatalf("error %v does not wrap ErrBadKey", err)
			}
			return
		}
		if ValidateChannel(ch) != nil || RegistryKey(ch) != key {
			t.Fatalf("ParseRegistryKey(%q) = %q, which is invalid or formats as %q", key, ch, RegistryKey(ch))
		}
	})
}

// FuzzParseNodeSessionKey: a session key parses only into a valid node ID
// that formats back to it.
func FuzzParseNodeSessionKey(f *testing.F) {
	for _, k := range []string{"session/node/1", "session/node/0", "session/node/-1", "session/node/01", "session/node/9223372036854775808"} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		id, err := ParseNodeSessionKey(key)
		if err != nil {
			if !errors.Is(err, ErrBadKey) {
				t.Fatalf("error %v does not wrap ErrBadKey", err)
			}
			return
		}
		if ValidateNodeID(id) != nil || NodeSessionKey(id) != key {
			t.Fatalf("ParseNodeSessionKey(%q) = %d, which is invalid or formats as %q", key, id, NodeSessionKey(id))
		}
	})
}

// FuzzDecodeValues: the other values in the KV (channel specs, node
// sessions) either decode into a valid value that round-trips or fail
// with ErrCorruptValue.
func FuzzDecodeValues(f *testing.F) {
	f.Add([]byte(`{"v":1,"name":"c","collection_id":3}`))
	f.Add([]byte(`{"v":1,"id":4,"addr":"n1","state":"Serving"}`))
	f.Add([]byte(`{"v":2}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if s, err := DecodeChannelSpec("registry/c", b); err != nil {
			if !errors.Is(err, ErrCorruptValue) {
				t.Fatalf("spec: error %v does not wrap ErrCorruptValue", err)
			}
		} else if enc, err := EncodeChannelSpec(s); err != nil {
			t.Fatalf("decoded spec %+v does not re-encode: %v", s, err)
		} else if s2, err := DecodeChannelSpec("registry/c", enc); err != nil || s2.Name != s.Name || s2.CollectionID != s.CollectionID {
			t.Fatalf("spec re-decode: %+v, %v; want %+v", s2, err, s)
		}
		if s, err := DecodeNodeSession("session/node/1", b); err != nil {
			if !errors.Is(err, ErrCorruptValue) {
				t.Fatalf("node session: error %v does not wrap ErrCorruptValue", err)
			}
		} else if enc, err := EncodeNodeSession(s); err != nil {
			t.Fatalf("decoded node session %+v does not re-encode: %v", s, err)
		} else if s2, err := DecodeNodeSession("session/node/1", enc); err != nil || s2.ID != s.ID || s2.State != s.State {
			t.Fatalf("node session re-decode: %+v, %v; want %+v", s2, err, s)
		}
	})
}
