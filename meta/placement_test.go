package meta

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

// Values written before weights, capacities and labels existed: they must
// keep decoding, with the defaults.
func TestDecodeOldPlacementValues(t *testing.T) {
	spec, err := DecodeChannelSpec(RegistryKey("c1"), []byte(`{"v":1,"name":"c1","collection_id":7,"vchannel":{"seek":3}}`))
	if err != nil {
		t.Fatalf("old spec: %v", err)
	}
	if spec.Weight != 0 || spec.EffectiveWeight() != 1 || !spec.Require.IsZero() || spec.Spread != "" || spec.CollectionID != 7 {
		t.Fatalf("old spec decoded as %+v", spec)
	}
	sess, err := DecodeNodeSession(NodeSessionKey(3),
		[]byte(`{"v":1,"id":3,"addr":"n3","start_time":"2026-01-02T03:04:05Z","state":"serving","ttl":10000000000}`))
	if err != nil {
		t.Fatalf("old session: %v", err)
	}
	if sess.Capacity != 0 || sess.EffectiveCapacity() != 1 || !sess.Labels.IsZero() || sess.TTL != 10*time.Second {
		t.Fatalf("old session decoded as %+v", sess)
	}
}

// A value that uses none of the new fields is written exactly as before
// (version 1, no new keys), so older readers keep reading it; one that uses
// any is version 2, which older readers refuse rather than misread.
func TestPlacementSchemaVersion(t *testing.T) {
	b, err := EncodeChannelSpec(ChannelSpec{Name: "c", CollectionID: 1})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), `{"v":1,"name":"c","collection_id":1}`; got != want {
		t.Fatalf("plain spec = %s, want %s", got, want)
	}
	in := ChannelSpec{Name: "c", CollectionID: 1, Weight: 2.5, Require: MustLabels("group=ingest"), Spread: "zone"}
	b, err = EncodeChannelSpec(in)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(b), `{"v":2,`) {
		t.Fatalf("spec with placement fields = %s, want version 2", b)
	}
	out, err := DecodeChannelSpec(RegistryKey("c"), b)
	if err != nil || out.Weight != 2.5 || out.Require.String() != "group=ingest" || out.Spread != "zone" {
		t.Fatalf("round trip: %+v, %v", out, err)
	}
	// What a reader of version 1 sees: a value it refuses.
	if err := decode("k", b, &ChannelSpec{}); !errors.Is(err, ErrCorruptValue) {
		t.Fatalf("a version-1 reader decoded a version-2 spec: %v", err)
	}
	sb, err := EncodeNodeSession(NodeSession{ID: 4, State: NodeServing, Capacity: 4, Labels: MustLabels("zone=a")})
	if err != nil {
		t.Fatal(err)
	}
	s, err := DecodeNodeSession(NodeSessionKey(4), sb)
	if err != nil || s.Capacity != 4 || s.Labels.String() != "zone=a" || !strings.HasPrefix(string(sb), `{"v":2,`) {
		t.Fatalf("session round trip: %s -> %+v, %v", sb, s, err)
	}
	for name, v := range map[string]string{
		"v3 spec":           `{"v":3,"name":"c"}`,
		"negative weight":   `{"v":2,"name":"c","weight":-1}`,
		"huge weight":       `{"v":2,"name":"c","weight":1e300}`,
		"bad require":       `{"v":2,"name":"c","require":{"group":""}}`,
		"bad spread":        `{"v":2,"name":"c","spread":"-zone"}`,
		"require not a map": `{"v":2,"name":"c","require":["a"]}`,
	} {
		if _, err := DecodeChannelSpec("registry/c", []byte(v)); !errors.Is(err, ErrCorruptValue) {
			t.Errorf("%s: err = %v, want ErrCorruptValue", name, err)
		}
	}
	for name, v := range map[string]string{
		"zero-free capacity": `{"v":2,"id":1,"state":"serving","capacity":-2}`,
		"bad label":          `{"v":2,"id":1,"state":"serving","labels":{"zone a":"x"}}`,
	} {
		if _, err := DecodeNodeSession("session/node/1", []byte(v)); !errors.Is(err, ErrCorruptValue) {
			t.Errorf("%s: err = %v, want ErrCorruptValue", name, err)
		}
	}
}

func TestValidatePlacementInputs(t *testing.T) {
	for _, w := range []float64{-1, math.NaN(), math.Inf(1), MaxWeight * 2} {
		if _, err := EncodeChannelSpec(ChannelSpec{Name: "c", Weight: w}); !errors.Is(err, ErrInvalidPlacement) {
			t.Errorf("weight %v: err = %v, want ErrInvalidPlacement", w, err)
		}
	}
	for _, w := range []float64{0, 0.001, 1, MaxWeight} {
		if _, err := EncodeChannelSpec(ChannelSpec{Name: "c", Weight: w}); err != nil {
			t.Errorf("weight %v: %v", w, err)
		}
	}
	if _, err := EncodeNodeSession(NodeSession{ID: 1, Capacity: math.Inf(1)}); !errors.Is(err, ErrInvalidPlacement) {
		t.Errorf("infinite capacity: %v", err)
	}
	if _, err := NewLabels(map[string]string{"zone": "a b"}); !errors.Is(err, ErrInvalidPlacement) {
		t.Errorf("bad label value: %v", err)
	}
	too := map[string]string{}
	for i := range MaxLabels + 1 {
		too[string(rune('a'+i%26))+strings.Repeat("x", i)] = "v"
	}
	if err := ValidateLabels(too); !errors.Is(err, ErrInvalidPlacement) {
		t.Errorf("%d labels: %v", len(too), err)
	}
}

func TestParseLabels(t *testing.T) {
	got, err := ParseLabels([]string{"zone=us-east-1a", "group=ingest", "k8s.io/role=data"})
	if err != nil {
		t.Fatal(err)
	}
	if s := got.String(); s != "group=ingest,k8s.io/role=data,zone=us-east-1a" {
		t.Fatalf("String = %q", s)
	}
	if v, ok := got.Get("k8s.io/role"); !ok || v != "data" || got.Len() != 3 {
		t.Fatalf("Get = %q, %v; Len = %d", v, ok, got.Len())
	}
	if _, ok := got.Get("role"); ok {
		t.Fatal("Get of a missing key")
	}
	b, err := json.Marshal(got)
	if err != nil || string(b) != `{"group":"ingest","k8s.io/role":"data","zone":"us-east-1a"}` {
		t.Fatalf("JSON %s, %v", b, err)
	}
	var back Labels
	if err := json.Unmarshal(b, &back); err != nil || back != got {
		t.Fatalf("JSON round trip: %v, %v", back, err)
	}
	for _, bad := range [][]string{{"zone"}, {"=a"}, {"zone="}, {"zone=a", "zone=b"}, {"zo ne=a"}, {"zone=a=b"}, {strings.Repeat("k", 64) + "=v"}} {
		if _, err := ParseLabels(bad); !errors.Is(err, ErrInvalidPlacement) {
			t.Errorf("ParseLabels(%q): err = %v, want ErrInvalidPlacement", bad, err)
		}
	}
	if l, err := ParseLabels(nil); !l.IsZero() || err != nil {
		t.Fatalf("ParseLabels(nil) = %v, %v", l, err)
	}
	node, req := MustLabels("zone=a", "group=g"), MustLabels("group=g")
	if !node.Meets(req) || (Labels{}).Meets(req) || !(Labels{}).Meets(Labels{}) || node.Meets(MustLabels("group=h")) {
		t.Fatal("Meets")
	}
}

func TestLoadReport(t *testing.T) {
	in := LoadReport{Node: 3, Time: time.Unix(100, 0).UTC(), Loads: map[string]float64{"a": 2.5, "b": 0}}
	b, err := EncodeLoadReport(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := DecodeLoadReport(LoadKey(3), b)
	if err != nil || out.Node != 3 || out.Loads["a"] != 2.5 || len(out.Loads) != 2 {
		t.Fatalf("round trip: %+v, %v", out, err)
	}
	if id, err := ParseLoadKey(LoadKey(12)); err != nil || id != 12 {
		t.Fatalf("ParseLoadKey = %d, %v", id, err)
	}
	for _, k := range []string{"load/", "load/0", "load/x", "load/1/2", "channel/1"} {
		if _, err := ParseLoadKey(k); !errors.Is(err, ErrBadKey) {
			t.Errorf("ParseLoadKey(%q) = %v, want ErrBadKey", k, err)
		}
	}
	for _, bad := range []LoadReport{{Node: 0}, {Node: 1, Loads: map[string]float64{"a/b": 1}}, {Node: 1, Loads: map[string]float64{"a": -1}},
		{Node: 1, Loads: map[string]float64{"a": math.Inf(1)}}} {
		if _, err := EncodeLoadReport(bad); err == nil {
			t.Errorf("EncodeLoadReport(%+v) succeeded", bad)
		}
	}
	if _, err := DecodeLoadReport("load/1", []byte(`{"v":1,"node":1,"loads":{"a":-3}}`)); !errors.Is(err, ErrCorruptValue) {
		t.Errorf("negative load decoded: %v", err)
	}
}
