package meta

import (
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// The fast path of DecodeChannelInfo and DecodeChannelSpec, the values a
// coordinator reads by the hundred thousand on a cold start.
//
// It reads only the plain form this package writes: a JSON object whose
// keys are exactly the fields' names, each at most once, with integers as
// integer literals and strings free of escapes and control characters (and
// valid UTF-8). For such input it returns what encoding/json would, field
// for field. It calls the same UnmarshalJSON methods (time.Time, Labels)
// on the same bytes, and copies raw values (Vchannel) as json.RawMessage
// does. Anything else makes it give up (ok false) without an error, and
// the caller decodes with encoding/json, whose answer and error count: a
// key in another case or with an escape, an unknown or repeated key, null,
// a number with a fraction where an integer goes, an escape in a string,
// invalid UTF-8, nesting deeper than maxFastDepth, or trailing data. It
// never accepts what encoding/json refuses: everything it accepts is valid
// JSON (TestFastDecodeAgrees and FuzzFastDecode check both directions).

// maxFastDepth bounds the nesting the fast path follows inside a raw value;
// encoding/json refuses beyond 10,000, so deeper input is left to it.
const maxFastDepth = 256

// lexer reads JSON from b at i.
type lexer struct {
	b []byte
	i int
}

func (l *lexer) ws() {
	for l.i < len(l.b) {
		switch l.b[l.i] {
		case ' ', '\t', '\n', '\r':
			l.i++
		default:
			return
		}
	}
}

// next skips white space and returns the next byte, or 0 at the end.
func (l *lexer) next() byte {
	l.ws()
	if l.i < len(l.b) {
		return l.b[l.i]
	}
	return 0
}

// eat skips white space and consumes c if it comes next.
func (l *lexer) eat(c byte) bool {
	if l.next() == c {
		l.i++
		return true
	}
	return false
}

// plain reads a string without escapes or control characters, in valid
// UTF-8, and returns its contents (which are then its decoded value) and
// its raw form with the quotes.
func (l *lexer) plain() (s, raw []byte, ok bool) {
	if l.next() != '"' {
		return nil, nil, false
	}
	start := l.i
	ascii := true
	for j := start + 1; j < len(l.b); j++ {
		switch c := l.b[j]; {
		case c == '"':
			s = l.b[start+1 : j]
			if !ascii && !utf8.Valid(s) {
				return nil, nil, false
			}
			l.i = j + 1
			return s, l.b[start:l.i], true
		case c == '\\' || c < 0x20:
			return nil, nil, false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return nil, nil, false
}

// number reads a JSON number and reports whether it is an integer literal
// (no fraction or exponent).
func (l *lexer) number() (lit []byte, integer, ok bool) {
	l.ws()
	b, start, j := l.b, l.i, l.i
	if j < len(b) && b[j] == '-' {
		j++
	}
	digits := func() bool {
		k := j
		for j < len(b) && b[j] >= '0' && b[j] <= '9' {
			j++
		}
		return j > k
	}
	switch {
	case j < len(b) && b[j] == '0':
		j++
	case j < len(b) && b[j] >= '1' && b[j] <= '9':
		digits()
	default:
		return nil, false, false
	}
	integer = true
	if j < len(b) && b[j] == '.' {
		j++
		if !digits() {
			return nil, false, false
		}
		integer = false
	}
	if j < len(b) && (b[j] == 'e' || b[j] == 'E') {
		j++
		if j < len(b) && (b[j] == '+' || b[j] == '-') {
			j++
		}
		if !digits() {
			return nil, false, false
		}
		integer = false
	}
	l.i = j
	return b[start:j], integer, true
}

// int64 reads an integer literal that fits an int64.
func (l *lexer) int64() (int64, bool) {
	lit, integer, ok := l.number()
	if !ok || !integer {
		return 0, false
	}
	neg := lit[0] == '-'
	if neg {
		lit = lit[1:]
	}
	if len(lit) > 19 {
		return 0, false
	}
	var u uint64
	for _, c := range lit {
		u = u*10 + uint64(c-'0') // 19 digits cannot overflow a uint64
	}
	switch {
	case !neg && u <= 1<<63-1:
		return int64(u), true
	case neg && u <= 1<<63:
		return -int64(u), true // -(1<<63) wraps to itself, as wanted
	}
	return 0, false
}

// raw reads any JSON value and returns its bytes, as encoding/json hands
// them to an Unmarshaler. null is refused: encoding/json treats it apart.
func (l *lexer) raw() ([]byte, bool) {
	l.ws()
	start := l.i
	if l.next() == 'n' || !l.value(0) {
		return nil, false
	}
	return l.b[start:l.i], true
}

// value reads any JSON value, nested at most maxFastDepth deep.
func (l *lexer) value(depth int) bool {
	switch c := l.next(); c {
	case '{', '[':
		if depth >= maxFastDepth {
			return false
		}
		l.i++
		end := byte('}')
		if c == '[' {
			end = ']'
		}
		if l.eat(end) {
			return true
		}
		for {
			if c == '{' && (!l.str() || !l.eat(':')) {
				return false
			}
			if !l.value(depth + 1) {
				return false
			}
			if l.eat(end) {
				return true
			}
			if !l.eat(',') {
				return false
			}
		}
	case '"':
		return l.str()
	case 't':
		return l.lit("true")
	case 'f':
		return l.lit("false")
	case 'n':
		return l.lit("null")
	default:
		_, _, ok := l.number()
		return ok
	}
}

func (l *lexer) lit(s string) bool {
	if len(l.b)-l.i >= len(s) && string(l.b[l.i:l.i+len(s)]) == s {
		l.i += len(s)
		return true
	}
	return false
}

// str reads any JSON string, escapes included, as encoding/json's scanner
// accepts it (bytes of 0x80 and above are taken as they are).
func (l *lexer) str() bool {
	if l.next() != '"' {
		return false
	}
	b := l.b
	for j := l.i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			l.i = j + 1
			return true
		case c < 0x20:
			return false
		case c == '\\':
			j++
			if j >= len(b) {
				return false
			}
			switch b[j] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if len(b)-j <= 4 {
					return false
				}
				for _, h := range b[j+1 : j+5] {
					if !('0' <= h && h <= '9' || 'a' <= h && h <= 'f' || 'A' <= h && h <= 'F') {
						return false
					}
				}
				j += 4
			default:
				return false
			}
		}
	}
	return false
}

// object reads a JSON object whose keys are plain strings, calling field
// for each key with the lexer at its value; field reads the value and
// returns a bit of seen (0 to give up). It requires "v" (bit 1, read into
// *ver) and nothing but white space after the object.
func (l *lexer) object(ver *int64, field func(l *lexer, key []byte) uint32) bool {
	if !l.eat('{') {
		return false
	}
	var seen uint32
	for {
		key, _, ok := l.plain()
		if !ok || !l.eat(':') {
			return false
		}
		var bit uint32
		if string(key) == "v" {
			bit = 1
			if *ver, ok = l.int64(); !ok {
				return false
			}
		} else if bit = field(l, key); bit == 0 {
			return false
		}
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		if l.eat('}') {
			l.ws()
			return l.i == len(l.b) && seen&1 != 0
		}
		if !l.eat(',') {
			return false
		}
	}
}

// fastString reads a plain string into *dst.
func fastString(l *lexer, dst *string) bool {
	s, _, ok := l.plain()
	if ok {
		*dst = string(s)
	}
	return ok
}

// fastInt64 reads an integer literal into *dst.
func fastInt64(l *lexer, dst *int64) bool {
	n, ok := l.int64()
	if ok {
		*dst = n
	}
	return ok
}

// fastRaw reads a raw value into *dst, copied as json.RawMessage copies.
func fastRaw(l *lexer, dst *json.RawMessage) bool {
	r, ok := l.raw()
	if ok {
		*dst = append(json.RawMessage(nil), r...)
	}
	return ok
}

// fastChannelInfo decodes b into *c and its schema version, or reports
// false (see above); *c is then undefined.
func fastChannelInfo(b []byte, c *ChannelInfo) (ver int64, ok bool) {
	l := lexer{b: b}
	ok = l.object(&ver, func(l *lexer, key []byte) uint32 {
		var ok bool
		var bit uint32
		switch string(key) {
		case "name":
			bit, ok = 1<<1, fastString(l, &c.Name)
		case "collection_id":
			bit, ok = 1<<2, fastInt64(l, &c.CollectionID)
		case "state":
			bit = 1 << 3
			var s []byte
			if s, _, ok = l.plain(); ok {
				c.State, ok = stateByName(string(s))
			}
		case "start_time":
			bit = 1 << 4
			var raw []byte
			if _, raw, ok = l.plain(); ok {
				ok = c.StartTime.UnmarshalJSON(raw) == nil
			}
		case "assign_rev":
			bit, ok = 1<<5, fastInt64(l, &c.AssignRevision)
		case "attempts":
			bit = 1 << 6
			var n int64
			if n, ok = l.int64(); ok && int64(int(n)) == n {
				c.Attempts = int(n)
			} else {
				ok = false
			}
		case "last_error":
			bit, ok = 1<<7, fastString(l, &c.LastError)
		case "progress":
			bit, ok = 1<<8, fastInt64(l, &c.Progress)
		case "failed_node":
			bit, ok = 1<<9, fastInt64(l, &c.FailedNode)
		case "vchannel":
			bit, ok = 1<<10, fastRaw(l, &c.Vchannel)
		}
		if !ok {
			return 0
		}
		return bit
	})
	return ver, ok
}

// fastChannelSpec decodes b into *s and its schema version, or reports
// false (see above); *s is then undefined.
func fastChannelSpec(b []byte, s *ChannelSpec) (ver int64, ok bool) {
	l := lexer{b: b}
	ok = l.object(&ver, func(l *lexer, key []byte) uint32 {
		var ok bool
		var bit uint32
		switch string(key) {
		case "name":
			bit, ok = 1<<1, fastString(l, &s.Name)
		case "collection_id":
			bit, ok = 1<<2, fastInt64(l, &s.CollectionID)
		case "vchannel":
			bit, ok = 1<<3, fastRaw(l, &s.Vchannel)
		case "weight":
			bit = 1 << 4
			var lit []byte
			if lit, _, ok = l.number(); ok {
				var err error
				s.Weight, err = strconv.ParseFloat(string(lit), 64)
				ok = err == nil
			}
		case "require":
			bit = 1 << 5
			var raw []byte
			if raw, ok = l.raw(); ok {
				ok = s.Require.UnmarshalJSON(raw) == nil
			}
		case "spread":
			bit, ok = 1<<6, fastString(l, &s.Spread)
		}
		if !ok {
			return 0
		}
		return bit
	})
	return ver, ok
}
