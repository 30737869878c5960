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
