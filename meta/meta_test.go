package meta

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestChannelKeyRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		id int64
		ch string
	}{{1, "dml_0"}, {12, "by-dev-rootcoord-dml_3_445v0"}, {0, "orphan"}} {
		id, ch, err := ParseChannelKey(ChannelKey(tc.id, tc.ch))
		if err != nil || id != tc.id || ch != tc.ch {
			t.Fatalf("ParseChannelKey(ChannelKey(%d,%q)) = %d,%q,%v", tc.id, tc.ch, id, ch, err)
		}
	}
}

func TestNodePrefixIsolation(t *testing.T) {
	if strings.HasPrefix(ChannelKey(12, "c"), NodePrefix(1)) {
		t.Fatalf("node 1's prefix %q matches node 12's key %q", NodePrefix(1), ChannelKey(12, "c"))
	}
	if !strings.HasPrefix(ChannelKey(1, "c"), NodePrefix(1)) {
		t.Fatal("node 1's key is outside its prefix")
	}
}

func TestParseChannelKeyRejects(t *testing.T) {
	for _, key := range []string{
		"channel/abc/ch", "channel/-1/ch", "channel/01/ch", "channel/1", "channel/1/",
		"channel/1/a/b", "channel//ch", "registry/ch", "channel/+1/ch", "channel/99999999999999999999/ch",
	} {
		if _, _, err := ParseChannelKey(key); !errors.Is(err, ErrBadKey) {
			t.Errorf("ParseChannelKey(%q) err = %v, want ErrBadKey", key, err)
		}
	}
}

func TestValidateChannel(t *testing.T) {
	for _, bad := range []string{"", "a/b", "a b", "a\x00", strings.Repeat("x", MaxChannelNameLen+1), "\xff", ".", ".."} {
		if err := ValidateChannel(bad); !errors.Is(err, ErrInvalidChannel) {
			t.Errorf("ValidateChannel(%q) = %v", bad, err)
		}
	}
	for _, good := range []string{"by-dev-rootcoord-dml_0_123v0", "...", ".a"} {
		if err := ValidateChannel(good); err != nil {
			t.Errorf("ValidateChannel(%q) = %v", good, err)
		}
	}
	if err := ValidateChannel("by-dev-rootcoord-dml_0_123v0"); err != nil {
		t.Fatal(err)
	}
}

func TestChannelInfoRoundTrip(t *testing.T) {
	in := ChannelInfo{Name: "ch1", CollectionID: 7, State: ToRelease, StartTime: time.Unix(100, 5).UTC(),
		AssignRevision: 42, Attempts: 2, LastError: "boom", Progress: 3, FailedNode: 9,
		Vchannel: json.RawMessage(`{"seek":"abc"}`)}
	b, err := EncodeChannelInfo(in)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(b), `{"v":1,`) || !strings.Contains(string(b), `"state":"ToRelease"`) {
		t.Fatalf("encoding not readable/versioned: %s", b)
	}
	out, err := DecodeChannelInfo(ChannelKey(3, "ch1"), b)
	if err != nil {
		t.Fatal(err)
	}
	if !out.StartTime.Equal(in.StartTime) || out.Name != in.Name || out.State != in.State ||
		out.AssignRevision != 42 || string(out.Vchannel) != string(in.Vchannel) || out.FailedNode != 9 {
		t.Fatalf("round trip: got %+v want %+v", out, in)
	}
}

func TestLegacyStates(t *testing.T) {
	for name, want := range map[string]State{"Uncomplete": ToWatch, "Complete": Watched, "WatchSuccess": Watched, "ReleaseSuccess": Released} {
		b := []byte(`{"v":1,"name":"c","state":"` + name + `"}`)
		c, err := DecodeChannelInfo("channel/1/c", b)
		if err != nil || c.State != want {
			t.Errorf("%s: got %v, %v; want %v", name, c.State, err, want)
		}
	}
}

func TestDecodeCorrupt(t *testing.T) {
	for name, b := range map[string]string{
		"empty":       ``,
		"not json":    `{{{`,
		"no version":  `{"name":"c","state":"ToWatch"}`,
		"v2":          `{"v":2,"name":"c","state":"ToWatch"}`,
		"bad state":   `{"v":1,"name":"c","state":"Dancing"}`,
		"no state":    `{"v":1,"name":"c"}`,
		"wrong name":  `{"v":1,"name":"other","state":"ToWatch"}`,
		"bad name":    `{"v":1,"name":"a/b","state":"ToWatch"}`,
		"state type":  `{"v":1,"name":"c","state":3}`,
		"array value": `[1,2]`,
	} {
		_, err := DecodeChannelInfo("channel/1/c", []byte(b))
		if !errors.Is(err, ErrCorruptValue) {
			t.Errorf("%s: err = %v, want ErrCorruptValue", name, err)
			continue
		}
		if !strings.Contains(err.Error(), "channel/1/c") {
			t.Errorf("%s: error %q does not name the key", name, err)
		}
	}
}

func TestNodeSession(t *testing.T) {
	b, err := EncodeNodeSession(NodeSession{ID: 5, State: NodeServing, TTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	s, err := DecodeNodeSession(NodeSessionKey(5), b)
	if err != nil || s.ID != 5 || s.TTL != 10*time.Second {
		t.Fatalf("got %+v, %v", s, err)
	}
	if _, err := DecodeNodeSession("k", []byte(`{"v":1,"id":5,"state":"zombie"}`)); !errors.Is(err, ErrCorruptValue) {
		t.Fatalf("unknown node state: %v", err)
	}
	if _, err := EncodeNodeSession(NodeSession{}); !errors.Is(err, ErrInvalidNodeID) {
		t.Fatalf("zero id: %v", err)
	}
	id, err := ParseNodeSessionKey(NodeSessionKey(77))
	if err != nil || id != 77 {
		t.Fatal(id, err)
	}
}

func TestTruncateError(t *testing.T) {
	short := strings.Repeat("e", MaxErrorLen)
	if got := TruncateError(short); got != short {
		t.Fatalf("an error of exactly MaxErrorLen bytes was changed")
	}
	for _, s := range []string{
		strings.Repeat("x", 4<<20),
		strings.Repeat("é", MaxErrorLen), // 2-byte runes: the cut must not split one
		strings.Repeat("x", MaxErrorLen+1),
	} {
		got := TruncateError(s)
		if len(got) > MaxErrorLen {
			t.Fatalf("truncated to %d bytes, max %d", len(got), MaxErrorLen)
		}
		if !utf8.ValidString(got) {
			t.Fatalf("truncation split a rune")
		}
		head, _, ok := strings.Cut(got, "…[truncated ")
		if !ok || !strings.HasPrefix(s, head) {
			t.Fatalf("no marker or wrong head: %q", got[len(got)-40:])
		}
		want := fmt.Sprintf("…[truncated %d bytes]", len(s)-len(head))
		if !strings.HasSuffix(got, want) {
			t.Fatalf("marker %q, want suffix %q", got[len(head):], want)
		}
	}
}

// TestUnknownState: the zero State is Unknown, named like the other
// states; StateUnknown stays as its deprecated alias.
func TestUnknownState(t *testing.T) {
	var zero State
	if zero != Unknown || Unknown.String() != "Unknown" || Unknown.Valid() {
		t.Fatalf("zero State %v (valid %v): want Unknown, not valid", zero, zero.Valid())
	}
	if StateUnknown != Unknown { //nolint:staticcheck // the deprecated alias must keep its value
		t.Fatal("StateUnknown is not Unknown")
	}
	if s, err := ParseState("Bogus"); s != Unknown || err == nil {
		t.Fatalf("ParseState(Bogus) = %v, %v", s, err)
	}
}
