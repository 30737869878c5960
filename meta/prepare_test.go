package meta

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestPrepareKeyRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		id int64
		ch string
	}{{1, "dml_0"}, {12, "by-dev-rootcoord-dml_3_445v0"}} {
		key := PrepareKey(tc.id, tc.ch)
		if !strings.HasPrefix(key, NodePreparePrefix(tc.id)) || !strings.HasPrefix(key, PreparePrefix) {
			t.Fatalf("PrepareKey(%d,%q) = %q: outside its prefixes", tc.id, tc.ch, key)
		}
		if strings.HasPrefix(key, ChannelPrefix) {
			t.Fatalf("PrepareKey(%d,%q) = %q is under %s", tc.id, tc.ch, key, ChannelPrefix)
		}
		id, ch, err := ParsePrepareKey(key)
		if err != nil || id != tc.id || ch != tc.ch {
			t.Fatalf("ParsePrepareKey(PrepareKey(%d,%q)) = %d,%q,%v", tc.id, tc.ch, id, ch, err)
		}
	}
	if strings.HasPrefix(PrepareKey(12, "c"), NodePreparePrefix(1)) {
		t.Fatal("node 1's prepare prefix matches node 12's key")
	}
}

func TestParsePrepareKeyRejects(t *testing.T) {
	for _, key := range []string{
		"prepare/abc/ch", "prepare/0/ch", "prepare/-1/ch", "prepare/01/ch", "prepare/1", "prepare/1/",
		"prepare/1/a/b", "prepare//ch", "prepare/remaining/ch", "channel/1/ch",
	} {
		if _, _, err := ParsePrepareKey(key); !errors.Is(err, ErrBadKey) {
			t.Errorf("ParsePrepareKey(%q) err = %v, want ErrBadKey", key, err)
		}
	}
}

func TestPrepareStates(t *testing.T) {
	// The numbers of the assignment states are stored nowhere (names are),
	// but keep them stable anyway; the prepare states come after them.
	for s, want := range map[State]int{ToWatch: 1, ReleaseFailure: 6, ToPrepare: 7, Prepared: 8, PrepareFailure: 9} {
		if int(s) != want {
			t.Errorf("%v = %d, want %d", s, int(s), want)
		}
	}
	for _, s := range []State{ToPrepare, Prepared, PrepareFailure} {
		if s.Valid() || !s.ValidPrepare() {
			t.Errorf("%v: Valid %v ValidPrepare %v; want a prepare state only", s, s.Valid(), s.ValidPrepare())
		}
		got, err := ParseState(s.String())
		if err != nil || got != s {
			t.Errorf("ParseState(%q) = %v, %v", s.String(), got, err)
		}
	}
	for s := ToWatch; s <= ReleaseFailure; s++ {
		if s.ValidPrepare() {
			t.Errorf("%v is a prepare state", s)
		}
	}
}

func TestPrepareInfoRoundTrip(t *testing.T) {
	key := PrepareKey(3, "dml_0")
	in := ChannelInfo{Name: "dml_0", CollectionID: 7, State: PrepareFailure, StartTime: time.Unix(100, 0).UTC(),
		Progress: 2, LastError: strings.Repeat("x", 2*MaxErrorLen)}
	b, err := EncodePrepareInfo(in)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(b), `{"v":1,`) || !strings.Contains(string(b), `"state":"PrepareFailure"`) {
		t.Fatalf("encoded %s: want schema version 1 and a readable state", b)
	}
	out, err := DecodePrepareInfo(key, b)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.LastError) > MaxErrorLen || out.State != PrepareFailure || out.Progress != 2 || out.CollectionID != 7 {
		t.Fatalf("decoded %+v", out)
	}
	// A prepare value is not an assignment, and an assignment is not a
	// prepare value.
	if _, err := DecodeChannelInfo(ChannelKey(3, "dml_0"), b); !errors.Is(err, ErrCorruptValue) {
		t.Fatalf("DecodeChannelInfo of a prepare value: %v, want ErrCorruptValue", err)
	}
	if _, err := EncodeChannelInfo(ChannelInfo{Name: "x", State: ToPrepare}); err == nil {
		t.Fatal("EncodeChannelInfo accepted ToPrepare")
	}
	w, _ := EncodeChannelInfo(ChannelInfo{Name: "dml_0", State: Watched})
	if _, err := DecodePrepareInfo(key, w); !errors.Is(err, ErrCorruptValue) {
		t.Fatalf("DecodePrepareInfo of an assignment: %v, want ErrCorruptValue", err)
	}
	if _, err := EncodePrepareInfo(ChannelInfo{Name: "dml_0", State: ToPrepare, AssignRevision: 5}); err == nil {
		t.Fatal("EncodePrepareInfo accepted a fencing token")
	}
	other, _ := EncodePrepareInfo(ChannelInfo{Name: "other", State: ToPrepare})
	if _, err := DecodePrepareInfo(key, other); !errors.Is(err, ErrCorruptValue) {
		t.Fatalf("DecodePrepareInfo with a foreign name: %v, want ErrCorruptValue", err)
	}
}

func TestNodeSessionPrepareOmitted(t *testing.T) {
	s := NodeSession{ID: 4, State: NodeServing, TTL: time.Second}
	b, err := EncodeNodeSession(s)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "prepare") || !strings.HasPrefix(string(b), `{"v":1,`) {
		t.Fatalf("session without Prepare encodes as %s: want no prepare field, version 1", b)
	}
	s.Prepare = true
	b, err = EncodeNodeSession(s)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"prepare":true`) || !strings.HasPrefix(string(b), `{"v":1,`) {
		t.Fatalf("session with Prepare encodes as %s", b)
	}
	got, err := DecodeNodeSession(NodeSessionKey(4), b)
	if err != nil || !got.Prepare {
		t.Fatalf("decoded %+v, %v", got, err)
	}
}
