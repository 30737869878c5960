package meta

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"pgregory.net/rapid"
)

// fastAgrees checks the fast path against encoding/json on b: when the
// fast path reads b, encoding/json must read it too, to the same value and
// version. It returns whether the fast path read it.
func fastAgrees(t interface {
	Helper()
	Fatalf(string, ...any)
}, b []byte) (info, spec bool) {
	t.Helper()
	var c ChannelInfo
	if ver, ok := fastChannelInfo(b, &c); ok {
		var w struct {
			V *int `json:"v"`
			ChannelInfo
		}
		if err := json.Unmarshal(b, &w); err != nil {
			t.Fatalf("fast path read %q as %+v, but encoding/json refuses it: %v", b, c, err)
		}
		if w.V == nil || int64(*w.V) != ver || !reflect.DeepEqual(w.ChannelInfo, c) {
			t.Fatalf("fast path read %q as v=%d %+v; encoding/json: v=%v %+v", b, ver, c, w.V, w.ChannelInfo)
		}
		info = true
	}
	var s ChannelSpec
	if ver, ok := fastChannelSpec(b, &s); ok {
		var w struct {
			V *int `json:"v"`
			ChannelSpec
		}
		if err := json.Unmarshal(b, &w); err != nil {
			t.Fatalf("fast path read %q as %+v, but encoding/json refuses it: %v", b, s, err)
		}
		if w.V == nil || int64(*w.V) != ver || !reflect.DeepEqual(w.ChannelSpec, s) {
			t.Fatalf("fast path read %q as v=%d %+v; encoding/json: v=%v %+v", b, ver, s, w.V, w.ChannelSpec)
		}
		spec = true
	}
	return info, spec
}

// TestFastDecodeAgrees: objects built from the fields' names with values
// of every JSON kind (edge numbers, escapes, invalid UTF-8, control
// characters, nesting, broken syntax), and from case and escape variants of
// the names, repeats, white space and trailing bytes: whatever the fast path
// reads, encoding/json reads the same. Many objects must take the fast
// path, or the test would check nothing.
func TestFastDecodeAgrees(t *testing.T) {
	ints := []string{"0", "7", "-1", "-0", "01", "1.0", "1e0", "9223372036854775807", "9223372036854775808",
		"-9223372036854775808", "-9223372036854775809", "12345678901234567890", "null", `"3"`, "-", "1.", ".5"}
	strs := []string{`"ch-1"`, `"c\"h"`, `"\u0063h-1"`, `"é"`, "\"\xff\"", "\"a\tb\"", `"a\x"`, `"\u12"`, `""`, "null", "1",
		"\"a\u2028b\"", `"ch-1`}
	raws := []string{`{}`, `[]`, `{"seek":[1,2,{"a":null}],"s":"x\"y"}`, `[1,[2,[3]]]`, `"opaque"`, "3", "true", "null",
		`{"a":}`, `[1,]`, `{"a" 1}`, `{"a":1`, `[ 1 , 2 ]`, `{"\ud800":"\u00e9"}`, `tru`, `"\q"`}
	pools := map[string][]string{
		"v":             {"1", "1", "1", "2", "3", "0", "-0", "01", "1.0", "null", `"1"`},
		"name":          strs,
		"collection_id": ints, "assign_rev": ints, "attempts": ints, "progress": ints, "failed_node": ints,
		"state": {`"Watched"`, `"ToWatch"`, `"Complete"`, `"Unknown"`, `"watched"`, `"ToPrepare"`, `"W\u0061tched"`, "null", "2"},
		"start_time": {`"2026-01-01T00:00:00Z"`, `"2026-01-01T00:00:00.123456789+02:00"`, `"2026-13-01T00:00:00Z"`,
			`"yesterday"`, "null", "0"},
		"last_error": strs, "spread": strs,
		"vchannel": raws,
		"weight":   {"0", "1", "0.5", "2.5e2", "-1", "1.5e309", "1e-400", "01", "1.", "null", `"1"`},
		"require": {`{"zone":"a"}`, `{"zone":"a","group":"ingest"}`, `{"Zone":"a=b"}`, `{"zone":1}`, `{}`, "null",
			`{"zone":"a","zone":"b"}`, `[]`},
	}
	good := map[string][]string{
		"v": {"1"}, "name": {`"ch-1"`, `"é"`}, "state": {`"Watched"`, `"Complete"`},
		"start_time": {`"2026-01-01T00:00:00Z"`, `"2026-01-01T00:00:00.123456789+02:00"`},
		"last_error": {`"ch-1"`, `""`}, "spread": {`"zone"`}, "vchannel": raws[:5], "weight": {"0.5", "2.5e2"},
		"require": {`{"zone":"a"}`}, "collection_id": {"7", "-1"}, "assign_rev": {"7", "9223372036854775807"},
		"attempts": {"0", "7"}, "progress": {"-9223372036854775808"}, "failed_node": {"7"},
	}
	names := []string{"v", "name", "collection_id", "state", "start_time", "assign_rev", "attempts", "last_error",
		"progress", "failed_node", "vchannel", "weight", "require", "spread"}
	variants := []string{"V", `\u0076`, "Name", "NAME", "ſtate", "vchanneL", "x", "", "v ", "ChannelInfo"}
	spaces := []string{"", "", "", " ", "\n\t", "\r "}
	tails := []string{"", "", "", "", " ", "\n", "x", "}", ",", "{}"}
	var read, total int
	rapid.Check(t, func(t *rapid.T) {
		sp := func() string { return rapid.SampledFrom(spaces).Draw(t, "ws") }
		fields := rapid.SliceOfNDistinct(rapid.SampledFrom(names), 0, len(names), rapid.ID[string]).Draw(t, "fields")
		if rapid.IntRange(0, 9).Draw(t, "has-v") > 0 && !slicesContains(fields, "v") {
			fields = append([]string{"v"}, fields...)
		}
		var parts []string
		for _, k := range fields {
			pool := pools[k]
			if rapid.IntRange(0, 9).Draw(t, "good") > 0 {
				pool = good[k]
			}
			v := rapid.SampledFrom(pool).Draw(t, "val")
			switch rapid.IntRange(0, 19).Draw(t, "mutate") {
			case 0: // a key in another case or spelling
				k = rapid.SampledFrom(variants).Draw(t, "variant")
			case 1: // the same key twice
				parts = append(parts, `"`+k+`":`+rapid.SampledFrom(pools[k]).Draw(t, "first"))
			}
			parts = append(parts, sp()+`"`+k+`"`+sp()+":"+sp()+v+sp())
		}
		b := sp() + "{" + strings.Join(parts, ",") + "}" + rapid.SampledFrom(tails).Draw(t, "tail")
		total++
		if info, spec := fastAgrees(t, []byte(b)); info || spec {
			read++
		}
	})
	t.Logf("the fast path read %d of %d generated objects", read, total)
	if read == 0 { // about one in six is read; none of 100 has odds under 1e-7
		t.Errorf("the fast path read none of %d generated objects; the test checks nothing", total)
	}
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// TestFastDecodeReadsWhatWeWrite: every value this package encodes takes
// the fast path (plain error texts and names), and reads back equal.
func TestFastDecodeReadsWhatWeWrite(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		name := rapid.StringMatching(`[a-z][a-z0-9_-]{0,20}`).Draw(t, "name")
		vch := rapid.SampledFrom([]string{"", `{"seek":"abc","ids":[1,2,3]}`, `"opaque"`, `[{"a":{"b":[]}}]`}).Draw(t, "vch")
		c := ChannelInfo{
			Name:           name,
			CollectionID:   rapid.Int64().Draw(t, "coll"),
			State:          State(rapid.IntRange(int(ToWatch), int(ReleaseFailure)).Draw(t, "state")),
			StartTime:      time.Unix(rapid.Int64Range(0, 1<<34).Draw(t, "sec"), rapid.Int64Range(0, 1e9-1).Draw(t, "ns")).UTC(),
			AssignRevision: rapid.Int64Min(0).Draw(t, "rev"),
			Attempts:       rapid.IntRange(0, 1000).Draw(t, "attempts"),
			LastError:      rapid.StringMatching(`[a-zA-Z0-9 :./é-]{0,40}`).Draw(t, "err"),
			Progress:       rapid.Int64().Draw(t, "progress"),
			FailedNode:     rapid.Int64Min(0).Draw(t, "failed"),
		}
		if vch != "" {
			c.Vchannel = json.RawMessage(vch)
		}
		b, err := EncodeChannelInfo(c)
		if err != nil {
			t.Fatalf("encode %+v: %v", c, err)
		}
		var got ChannelInfo
		if ver, ok := fastChannelInfo(b, &got); !ok || ver != SchemaVersion {
			t.Fatalf("fast path did not read our own %s", b)
		}
		if !reflect.DeepEqual(got, c) {
			t.Fatalf("read %+v, wrote %+v", got, c)
		}
		fastAgrees(t, b)

		s := ChannelSpec{Name: name, CollectionID: c.CollectionID, Vchannel: c.Vchannel,
			Weight: rapid.SampledFrom([]float64{0, 0.5, 1, 2.25, 1e-3, 1e6}).Draw(t, "weight"),
			Spread: rapid.SampledFrom([]string{"", "zone"}).Draw(t, "spread")}
		if rapid.Bool().Draw(t, "require") {
			s.Require, err = NewLabels(map[string]string{"group": "ingest", "zone": "a"})
			if err != nil {
				t.Fatal(err)
			}
		}
		b, err = EncodeChannelSpec(s)
		if err != nil {
			t.Fatalf("encode %+v: %v", s, err)
		}
		var gs ChannelSpec
		if _, ok := fastChannelSpec(b, &gs); !ok {
			t.Fatalf("fast path did not read our own %s", b)
		}
		if !reflect.DeepEqual(gs, s) {
			t.Fatalf("read %+v, wrote %+v", gs, s)
		}
		fastAgrees(t, b)
	})
}

// FuzzFastDecode: on any bytes, what the fast path reads, encoding/json
// reads the same.
func FuzzFastDecode(f *testing.F) {
	f.Add([]byte(`{"v":1,"name":"c","state":"ToWatch","start_time":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"v":2,"name":"c","weight":1.5,"require":{"zone":"a"},"spread":"zone"}`))
	f.Add([]byte(` {"v":1,"name":"c","vchannel":{"a":[1,"\u0041",{}]},"attempts":3} `))
	f.Fuzz(func(t *testing.T, b []byte) { fastAgrees(t, b) })
}
