package listener

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// This file turns PostgreSQL's text output of a value into the JSON that
// to_jsonb gives for it: what the logical source needs to make events
// identical to the trigger source's. It assumes the text was produced with
// DateStyle = ISO and TimeZone = UTC (the logical source sets both on its
// connection), as the capture triggers render in UTC.

// Type is what the conversion needs to know of a column's type.
type Type struct {
	OID uint32
	// Kind says how values are written: see the kind* constants.
	Kind byte
	// Elem is the element type of an array.
	Elem *Type
	// Delim is an array's element delimiter (',' for almost every type).
	Delim byte
	// Fields are a composite type's attributes, in order.
	Fields []Field
}

// Field is one attribute of a composite type.
type Field struct {
	Name string
	Type *Type
}

// Kinds of value, after json.c's categories.
const (
	kindText        = 't' // a JSON string of the text
	kindBool        = 'b'
	kindNumber      = 'n' // a JSON number, or a string for NaN and infinities
	kindFloat       = 'f' // likewise, written as numeric writes it (no exponent)
	kindDate        = 'd' // ISO already; infinities as strings
	kindTimestamp   = 's' // "YYYY-MM-DD HH:MI:SS" to "YYYY-MM-DDTHH:MI:SS"
	kindTimestampTZ = 'z' // and "+00" to "+00:00"
	kindJSON        = 'j' // embedded (jsonb: its text is canonical already)
	kindJSONText    = 'J' // json: embedded as jsonb would store it
	kindArray       = 'a'
	kindComposite   = 'c'
)

// ErrBadValue is wrapped when a value's text does not parse as its type.
var ErrBadValue = errors.New("malformed value")

// ValueJSON appends to dst the JSON to_jsonb gives for the value whose text
// output is text.
func ValueJSON(dst, text []byte, t *Type) ([]byte, error) {
	switch t.Kind {
	case kindBool:
		switch string(text) {
		case "t":
			return append(dst, "true"...), nil
		case "f":
			return append(dst, "false"...), nil
		}
		return dst, fmt.Errorf("%w: boolean %q", ErrBadValue, text)
	case kindNumber, kindFloat:
		switch string(text) {
		case "NaN", "Infinity", "-Infinity":
			return appendJSONString(dst, text), nil
		}
		if len(text) == 0 || !isNumberEdge(text[0]) || !isNumberEdge(text[len(text)-1]) || text[len(text)-1] == '-' || !json.Valid(text) {
			return dst, fmt.Errorf("%w: number %q", ErrBadValue, text)
		}
		if t.Kind == kindFloat {
			// to_jsonb stores numbers as numeric, which writes 1e+100 out
			// in full and has no negative zero.
			return appendNumeric(dst, text)
		}
		return append(dst, text...), nil
	case kindDate:
		return appendJSONString(dst, text), nil
	case kindTimestamp, kindTimestampTZ:
		return appendTimestamp(dst, text, t.Kind == kindTimestampTZ), nil
	case kindJSON:
		var buf bytes.Buffer
		if err := json.Compact(&buf, text); err != nil {
			return dst, fmt.Errorf("%w: json: %v", ErrBadValue, err)
		}
		return append(dst, buf.Bytes()...), nil
	case kindJSONText:
		return appendAsJSONB(dst, text)
	case kindArray:
		if t.Elem == nil {
			return dst, fmt.Errorf("array type %d without an element type", t.OID)
		}
		return appendArray(dst, text, t)
	case kindComposite:
		return appendComposite(dst, text, t)
	default:
		return appendJSONString(dst, text), nil
	}
}

// appendAsJSONB writes a json value as to_jsonb converts it to jsonb: object
// keys in jsonb's order (shorter first, then bytewise), the last of
// duplicate keys kept, strings unescaped and escaped again as
// escape_json does, numbers as numeric writes them (no exponent, no -0).
func appendAsJSONB(dst, text []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(text))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return dst, fmt.Errorf("%w: json: %v", ErrBadValue, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return dst, fmt.Errorf("%w: json: trailing text", ErrBadValue)
	}
	return appendJSONBValue(dst, v)
}

func appendJSONBValue(dst []byte, v any) ([]byte, error) {
	switch v := v.(type) {
	case nil:
		return append(dst, "null"...), nil
	case bool:
		return strconv.AppendBool(dst, v), nil
	case string:
		return appendJSONString(dst, []byte(v)), nil
	case json.Number:
		return appendNumeric(dst, []byte(v))
	case []any:
		dst = append(dst, '[')
		for i, e := range v {
			if i > 0 {
				dst = append(dst, ',')
			}
			var err error
			if dst, err = appendJSONBValue(dst, e); err != nil {
				return dst, err
			}
		}
		return append(dst, ']'), nil
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, jsonbKeyCompare)
		dst = append(dst, '{')
		for i, k := range keys {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendJSONString(dst, []byte(k))
			dst = append(dst, ':')
			var err error
			if dst, err = appendJSONBValue(dst, v[k]); err != nil {
				return dst, err
			}
		}
		return append(dst, '}'), nil
	}
	return dst, fmt.Errorf("%w: json: unexpected %T", ErrBadValue, v)
}

// jsonbKeyCompare orders object keys as jsonb stores them: shorter first,
// then bytewise.
func jsonbKeyCompare(a, b string) int {
	if len(a) != len(b) {
		return len(a) - len(b)
	}
	return strings.Compare(a, b)
}

// appendZero writes a zero as numeric does: no sign, and as many decimals
// as its scale (the decimals written less the exponent, at least none).
func appendZero(dst, n []byte) []byte {
	exp := 0
	if i := bytes.IndexAny(n, "eE"); i >= 0 {
		exp, _ = strconv.Atoi(string(n[i+1:]))
		n = n[:i]
	}
	scale := 0
	if _, frac, ok := bytes.Cut(n, []byte(".")); ok {
		scale = len(frac)
	}
	scale = min(max(scale-exp, 0), 1000)
	dst = append(dst, '0')
	if scale > 0 {
		dst = append(dst, '.')
		dst = append(dst, bytes.Repeat([]byte{'0'}, scale)...)
	}
	return dst
}

// isZeroNumber reports whether a JSON number's mantissa is all zeros.
func isZeroNumber(n []byte) bool {
	if i := bytes.IndexAny(n, "eE"); i >= 0 {
		n = n[:i]
	}
	return strings.Trim(string(n), "-0.") == ""
}

// isNumberEdge reports whether c may start or end PostgreSQL's output of a
// number (and so rules out JSON's other values and surrounding space).
func isNumberEdge(c byte) bool { return c == '-' || c >= '0' && c <= '9' }

// appendPlainDecimal writes a JSON number without its exponent: 1.5e+3 as
// 1500, 1e-3 as 0.001.
func appendPlainDecimal(dst, num []byte) ([]byte, error) {
	e := bytes.IndexAny(num, "eE")
	if e < 0 {
		return append(dst, num...), nil
	}
	exp, err := strconv.Atoi(string(num[e+1:]))
	if err != nil || exp > 400 || exp < -400 {
		return dst, fmt.Errorf("%w: number %q", ErrBadValue, num)
	}
	mant := num[:e]
	if len(mant) > 0 && mant[0] == '-' {
		dst = append(dst, '-')
		mant = mant[1:]
	}
	intPart, frac, _ := bytes.Cut(mant, []byte("."))
	digits := append(append([]byte{}, intPart...), frac...)
	point := len(intPart) + exp // position of the decimal point in digits
	// Leading zeros of digits do not matter; strip them, moving the point.
	for len(digits) > 1 && digits[0] == '0' {
		digits = digits[1:]
		point--
	}
	switch {
	case point <= 0:
		dst = append(dst, "0."...)
		dst = append(dst, bytes.Repeat([]byte{'0'}, -point)...)
		dst = append(dst, digits...)
	case point >= len(digits):
		dst = append(dst, digits...)
		dst = append(dst, bytes.Repeat([]byte{'0'}, point-len(digits))...)
	default:
		dst = append(dst, digits[:point]...)
		dst = append(dst, '.')
		dst = append(dst, digits[point:]...)
	}
	return dst, nil
}

// appendJSONString writes s as a JSON string exactly as PostgreSQL's
// escape_json does (and so as to_jsonb's text output shows it): only the
// quote, the backslash and control characters are escaped; <, >, & and
// non-ASCII characters are written as they are.
func appendJSONString(dst, s []byte) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for _, c := range s {
		switch c {
		case '"':
			dst = append(dst, '\\', '"')
		case '\\':
			dst = append(dst, '\\', '\\')
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\f':
			dst = append(dst, '\\', 'f')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			if c < ' ' {
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			} else {
				dst = append(dst, c)
			}
		}
	}
	return append(dst, '"')
}

// appendTimestamp rewrites ISO DateStyle output the way to_jsonb writes
// timestamps: a T between date and time, and a zone offset with minutes.
func appendTimestamp(dst, text []byte, tz bool) []byte {
	s, bc := strings.CutSuffix(string(text), " BC")
	if s == "infinity" || s == "-infinity" || len(s) < 19 || s[10] != ' ' {
		return appendJSONString(dst, text) // infinities as they are
	}
	s = s[:10] + "T" + s[11:]
	if tz {
		// The offset is the last +hh, -hh, +hh:mm or +hh:mm:ss; to_jsonb
		// always writes minutes.
		if i := lastSign(s); i > 0 && len(s)-i == 3 {
			s += ":00"
		}
	}
	if bc {
		s += " BC" // as to_jsonb writes years before 1
	}
	return appendJSONString(dst, []byte(s))
}

func lastSign(s string) int {
	for i := len(s) - 1; i >= 19; i-- {
		if s[i] == '+' || s[i] == '-' {
			return i
		}
	}
	return -1
}

// appendArray converts an array literal ({1,2,NULL}, {{1},{2}}, with an
// optional [lo:hi]= dimension prefix, which to_jsonb drops).
func appendArray(dst, text []byte, t *Type) ([]byte, error) {
	if i := bytes.Index(text, []byte("={")); i >= 0 && len(text) > 0 && text[0] == '[' {
		text = text[i+1:]
	}
	p := arrayParser{s: text, delim: t.Delim}
	if p.delim == 0 {
		p.delim = ','
	}
	out, err := p.parse(dst, t.Elem)
	if err != nil {
		return dst, err
	}
	if p.i != len(p.s) {
		return dst, fmt.Errorf("%w: array %q: trailing text", ErrBadValue, text)
	}
	return out, nil
}

type arrayParser struct {
	s     []byte
	i     int
	delim byte
}

func (p *arrayParser) parse(dst []byte, elem *Type) ([]byte, error) {
	if p.i >= len(p.s) || p.s[p.i] != '{' {
		return dst, fmt.Errorf("%w: array %q: expected {", ErrBadValue, p.s)
	}
	p.i++
	dst = append(dst, '[')
	if p.i < len(p.s) && p.s[p.i] == '}' {
		p.i++
		return append(dst, ']'), nil
	}
	for first := true; ; first = false {
		if !first {
			dst = append(dst, ',')
		}
		var err error
		if p.i < len(p.s) && p.s[p.i] == '{' {
			dst, err = p.parse(dst, elem)
		} else {
			dst, err = p.element(dst, elem)
		}
		if err != nil {
			return dst, err
		}
		if p.i >= len(p.s) {
			return dst, fmt.Errorf("%w: array %q: unterminated", ErrBadValue, p.s)
		}
		switch p.s[p.i] {
		case '}':
			p.i++
			return append(dst, ']'), nil
		case p.delim:
			p.i++
		default:
			return dst, fmt.Errorf("%w: array %q: unexpected %q", ErrBadValue, p.s, p.s[p.i])
		}
	}
}

// element reads one element: "quoted \"text\"", or unquoted up to the
// delimiter or the closing brace; an unquoted NULL is null.
func (p *arrayParser) element(dst []byte, elem *Type) ([]byte, error) {
	var v []byte
	if p.i < len(p.s) && p.s[p.i] == '"' {
		p.i++
		for {
			if p.i >= len(p.s) {
				return dst, fmt.Errorf("%w: array %q: unterminated quote", ErrBadValue, p.s)
			}
			c := p.s[p.i]
			p.i++
			if c == '"' {
				break
			}
			if c == '\\' && p.i < len(p.s) {
				c = p.s[p.i]
				p.i++
			}
			v = append(v, c)
		}
		return ValueJSON(dst, v, elem)
	}
	start := p.i
	for p.i < len(p.s) && p.s[p.i] != p.delim && p.s[p.i] != '}' {
		p.i++
	}
	v = p.s[start:p.i]
	if string(v) == "NULL" {
		return append(dst, "null"...), nil
	}
	return ValueJSON(dst, v, elem)
}

// appendComposite converts a row literal ((1,"a b",)) to an object; an
// empty field is null.
func appendComposite(dst, text []byte, t *Type) ([]byte, error) {
	if len(text) < 2 || text[0] != '(' || text[len(text)-1] != ')' {
		return dst, fmt.Errorf("%w: record %q", ErrBadValue, text)
	}
	s := text[1 : len(text)-1]
	dst = append(dst, '{')
	i := 0
	for n, f := range t.Fields {
		if n > 0 {
			if i >= len(s) || s[i] != ',' {
				return dst, fmt.Errorf("%w: record %q: too few fields", ErrBadValue, text)
			}
			i++
			dst = append(dst, ',')
		}
		dst = appendJSONString(dst, []byte(f.Name))
		dst = append(dst, ':')
		var v []byte
		quoted := false
		if i < len(s) && s[i] == '"' {
			quoted = true
			i++
			for {
				if i >= len(s) {
					return dst, fmt.Errorf("%w: record %q: unterminated quote", ErrBadValue, text)
				}
				c := s[i]
				i++
				if c == '"' {
					if i < len(s) && s[i] == '"' { // "" is a quote
						v = append(v, '"')
						i++
						continue
					}
					break
				}
				if c == '\\' && i < len(s) {
					c = s[i]
					i++
				}
				v = append(v, c)
			}
		} else {
			start := i
			for i < len(s) && s[i] != ',' {
				i++
			}
			v = s[start:i]
		}
		if !quoted && len(v) == 0 {
			dst = append(dst, "null"...)
			continue
		}
		var err error
		if dst, err = ValueJSON(dst, v, f.Type); err != nil {
			return dst, err
		}
	}
	if i != len(s) {
		return dst, fmt.Errorf("%w: record %q: too many fields", ErrBadValue, text)
	}
	return append(dst, '}'), nil
}

// Types reads and caches type descriptions from the catalog. Safe for
// concurrent use.
type Types struct {
	mu    sync.Mutex
	types map[uint32]*Type // guarded by mu
}

// Type describes oid, reading the catalog the first time.
func (ts *Types) Type(ctx context.Context, db Querier, oid uint32) (*Type, error) {
	ts.mu.Lock()
	if t, ok := ts.types[oid]; ok {
		ts.mu.Unlock()
		return t, nil
	}
	ts.mu.Unlock()
	t, err := loadType(ctx, db, oid, 0)
	if err != nil {
		return nil, err
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.types == nil {
		ts.types = map[uint32]*Type{}
	}
	ts.types[oid] = t
	return t, nil
}

func loadType(ctx context.Context, db Querier, oid uint32, depth int) (*Type, error) {
	if depth > 8 {
		return nil, fmt.Errorf("type %d: nested too deeply", oid)
	}
	var (
		base              uint32
		typtype, category string
		elem, relid       uint32
		delim             string
	)
	// Domains take their base type's kind, as to_jsonb does.
	err := db.QueryRow(ctx, `
		WITH RECURSIVE d(oid) AS (
		     SELECT $1::oid
		     UNION ALL
		     SELECT t.typbasetype FROM pg_type t JOIN d ON t.oid = d.oid WHERE t.typtype = 'd')
		SELECT t.oid, t.typtype::text, t.typcategory::text, t.typelem, t.typrelid, t.typdelim::text
		  FROM pg_type t JOIN d ON t.oid = d.oid WHERE t.typtype <> 'd'`, oid).
		Scan(&base, &typtype, &category, &elem, &relid, &delim)
	if err != nil {
		return nil, fmt.Errorf("describe type %d: %w", oid, err)
	}
	t := &Type{OID: oid, Kind: kindText}
	switch base {
	case 16: // bool
		t.Kind = kindBool
	case 20, 21, 23, 1700: // int8 int2 int4 numeric
		t.Kind = kindNumber
	case 700, 701: // float4 float8
		t.Kind = kindFloat
	case 1082: // date
		t.Kind = kindDate
	case 1114: // timestamp
		t.Kind = kindTimestamp
	case 1184: // timestamptz
		t.Kind = kindTimestampTZ
	case 3802: // jsonb
		t.Kind = kindJSON
	case 114: // json
		t.Kind = kindJSONText
	default:
		switch {
		case category == "A" && elem != 0:
			t.Kind = kindArray
			if len(delim) == 1 {
				t.Delim = delim[0]
			}
			if t.Elem, err = loadType(ctx, db, elem, depth+1); err != nil {
				return nil, err
			}
		case typtype == "c" && relid != 0:
			t.Kind = kindComposite
			rows, err := db.Query(ctx, `SELECT attname, atttypid FROM pg_attribute
				WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum`, relid)
			if err != nil {
				return nil, fmt.Errorf("describe type %d: %w", oid, err)
			}
			type attr struct {
				name string
				typ  uint32
			}
			var attrs []attr
			for rows.Next() {
				var a attr
				if err := rows.Scan(&a.name, &a.typ); err != nil {
					rows.Close()
					return nil, fmt.Errorf("describe type %d: %w", oid, err)
				}
				attrs = append(attrs, a)
			}
			if err := rows.Err(); err != nil {
				return nil, fmt.Errorf("describe type %d: %w", oid, err)
			}
			for _, a := range attrs {
				ft, err := loadType(ctx, db, a.typ, depth+1)
				if err != nil {
					return nil, err
				}
				t.Fields = append(t.Fields, Field{Name: a.name, Type: ft})
			}
		}
	}
	return t, nil
}
