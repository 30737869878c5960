package meta

import (
	"reflect"
	"strings"
	"testing"
)

// TestDecodeOnceAgreesWithDecode: the one-pass decoding of the hot values
// accepts exactly what the two-pass decode does, with the same result.
func TestDecodeOnceAgreesWithDecode(t *testing.T) {
	const key = "channel/7/ch-1"
	values := []string{
		`{"v":1,"name":"ch-1","collection_id":3,"state":"Watched","vchannel":{"seek":[1,2]}}`,
		`{"v":1,"name":"ch-1","collection_id":3,"state":"Watched","future_field":true}`,
		`{"name":"ch-1","state":"Watched"}`,             // no version
		`{"v":2,"name":"ch-1","state":"Watched"}`,       // a later schema
		`{"v":1,"name":"ch-1","state":"Watched","v":2}`, // the last "v" counts
		`{"v":2,"name":"ch-1","state":"Watched","v":1}`, // likewise
		`{"v":"1","name":"ch-1","state":"Watched"}`,     // not a number
		`{"v":1,"name":"ch-1","state":"NoSuchState"}`,   // unknown state
		`{"v":1,"name":"ch-1","collection_id":"x"}`,     // wrong type
		`{"v":2,"name":"ch-1","collection_id":"x"}`,     // both: the version is reported
		`{"v":1,"name":"ch-2","state":"Watched"}`,       // names another channel
		`[1,2]`, `null`, ``, `{`, `{"v":1}`,
	}
	for _, v := range values {
		var want ChannelInfo
		werr := decode(key, []byte(v), &want)
		if werr == nil {
			if err := want.Validate(); err != nil {
				werr = err
			} else if want.Name != "ch-1" {
				werr = ErrCorruptValue
			}
		}
		got, err := DecodeChannelInfo(key, []byte(v))
		if (err == nil) != (werr == nil) {
			t.Errorf("DecodeChannelInfo(%s): err %v, two-pass decode says %v", v, err, werr)
			continue
		}
		if err == nil && !reflect.DeepEqual(got, want) {
			t.Errorf("DecodeChannelInfo(%s) = %+v, want %+v", v, got, want)
		}
		var wantSpec ChannelSpec
		serr := decodeUpTo("registry/ch-1", []byte(v), &wantSpec, PlacementSchemaVersion)
		if serr == nil {
			serr = wantSpec.Validate()
		}
		spec, err := DecodeChannelSpec("registry/ch-1", []byte(v))
		if (err == nil) != (serr == nil) {
			t.Errorf("DecodeChannelSpec(%s): err %v, two-pass decode says %v", v, err, serr)
			continue
		}
		if err == nil && !reflect.DeepEqual(spec, wantSpec) {
			t.Errorf("DecodeChannelSpec(%s) = %+v, want %+v", v, spec, wantSpec)
		}
	}
	// The version error is the one a reader sees for a later schema, even
	// when the rest would not decode either.
	if _, err := DecodeChannelInfo(key, []byte(`{"v":2,"name":"ch-1","collection_id":"x"}`)); err == nil ||
		!contains(err.Error(), "schema version 2") {
		t.Errorf("later schema: err %v, want the schema version named", err)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// BenchmarkDecodeChannelInfo compares DecodeChannelInfo (its fast path)
// on an assignment with a 200-byte payload against encoding/json in one
// pass and in two.
func BenchmarkDecodeChannelInfo(b *testing.B) {
	payload := `{"seek":"` + strings.Repeat("x", 188) + `"}`
	val, err := EncodeChannelInfo(ChannelInfo{Name: "ch-1", CollectionID: 3, State: Watched, AssignRevision: 99, Vchannel: []byte(payload)})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("two-pass", func(b *testing.B) {
		for b.Loop() {
			var c ChannelInfo
			if err := decode("channel/7/ch-1", val, &c); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("json-one-pass", func(b *testing.B) {
		for b.Loop() {
			var w struct {
				V *int `json:"v"`
				ChannelInfo
			}
			if !decodeOnce(val, &w, &w.V, SchemaVersion) {
				b.Fatal("not decoded")
			}
		}
	})
	b.Run("one-pass", func(b *testing.B) {
		for b.Loop() {
			if _, err := DecodeChannelInfo("channel/7/ch-1", val); err != nil {
				b.Fatal(err)
			}
		}
	})
}
