package meta

import (
	"reflect"
	"strings"
	"testing"

	"pgregory.net/rapid"
)

// Objects built from case variants of every field name, "v" in every form,
// duplicates and wrong types: one pass and two passes must agree.
func TestDecodeOnceAgreesWide(t *testing.T) {
	keys := []string{"v", "V", `\u0056`, "name", "Name", "NAME", "nAme", "collection_id", "Collection_ID", "state", "State", "STATE",
		"vchannel", "Vchannel", "VCHANNEL", "weight", "Weight", "require", "Require", "spread", "Spread", "attempts", "failed_node",
		"start_time", "assign_rev", "last_error", "progress", "ChannelInfo", "ChannelSpec", "v ", "ſtate", "vchanneL", "x"}
	vals := []string{"1", "2", "0", "3", "null", `"1"`, "1.0", `"ch-1"`, `"ch-2"`, `"Watched"`, `"ToRelease"`, `"Nope"`, `{"a":"b"}`,
		`{"seek":[1,2]}`, "[]", "true", `"2026-01-01T00:00:00Z"`, `"zone"`, `{}`, "-1", "1e0"}
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.IntRange(0, 8).Draw(t, "n")
		var parts []string
		for range n {
			k := rapid.SampledFrom(keys).Draw(t, "k")
			v := rapid.SampledFrom(vals).Draw(t, "val")
			parts = append(parts, `"`+k+`":`+v)
		}
		b := []byte("{" + strings.Join(parts, ",") + "}")
		const key = "channel/7/ch-1"
		var want ChannelInfo
		werr := decode(key, b, &want)
		if werr == nil {
			if err := want.Validate(); err != nil {
				werr = err
			} else if want.Name != "ch-1" {
				werr = ErrCorruptValue
			}
		}
		got, err := DecodeChannelInfo(key, b)
		if (err == nil) != (werr == nil) || (err == nil && !reflect.DeepEqual(got, want)) {
			t.Fatalf("DecodeChannelInfo(%s) = %+v, %v; two-pass %+v, %v", b, got, err, want, werr)
		}
		var wantSpec ChannelSpec
		serr := decodeUpTo("registry/ch-1", b, &wantSpec, PlacementSchemaVersion)
		if serr == nil {
			serr = wantSpec.Validate()
		}
		spec, err := DecodeChannelSpec("registry/ch-1", b)
		if (err == nil) != (serr == nil) || (err == nil && !reflect.DeepEqual(spec, wantSpec)) {
			t.Fatalf("DecodeChannelSpec(%s) = %+v, %v; two-pass %+v, %v", b, spec, err, wantSpec, serr)
		}
	})
}
