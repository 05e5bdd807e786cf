package subscriptions

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// decimal is an exactly parsed decimal number: ±0.D × 10^exp, where D is the
// significant digits s[lo:hi] (which may contain the number's '.', skipped)
// with no leading or trailing zeros. Zero has lo == hi. It points into the
// string it was parsed from and so costs no allocation.
type decimal struct {
	s      string
	lo, hi int
	exp    int
	neg    bool
}

// maxExponent bounds the exponent a number may be written with; PostgreSQL's
// numeric stops far below it.
const maxExponent = 1_000_000

// parseDecimal parses s as a decimal number: an optional sign, digits with
// an optional '.', and an optional exponent ("-12", "1.50", ".5", "4.2e1").
// NaN and infinities are not numbers here (to_jsonb renders them as text).
func parseDecimal(s string) (decimal, bool) {
	i := 0
	neg := false
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		neg = s[i] == '-'
		i++
	}
	intStart := i
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	intEnd := i
	fracStart, fracEnd := i, i
	if i < len(s) && s[i] == '.' {
		i++
		fracStart = i
		for i < len(s) && isDigit(s[i]) {
			i++
		}
		fracEnd = i
	}
	if intEnd == intStart && fracEnd == fracStart {
		return decimal{}, false
	}
	e := 0
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		eneg := false
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			eneg = s[i] == '-'
			i++
		}
		start := i
		for i < len(s) && isDigit(s[i]) {
			e = e*10 + int(s[i]-'0')
			if e > maxExponent {
				return decimal{}, false
			}
			i++
		}
		if i == start {
			return decimal{}, false
		}
		if eneg {
			e = -e
		}
	}
	if i != len(s) {
		return decimal{}, false
	}
	d := decimal{s: s, neg: neg}
	// The first significant digit.
	lo := -1
	for k := intStart; k < intEnd; k++ {
		if s[k] != '0' {
			lo = k
			d.exp = intEnd - k + e
			break
		}
	}
	if lo < 0 {
		for k := fracStart; k < fracEnd; k++ {
			if s[k] != '0' {
				lo = k
				d.exp = -(k - fracStart) + e
				break
			}
		}
	}
	if lo < 0 {
		return decimal{s: s}, true // zero, whatever its sign
	}
	// The last significant digit; s[lo] is one, so the loop stops there.
	hi := lo + 1
	for k := fracEnd - 1; k > lo; k-- {
		if s[k] != '0' && s[k] != '.' {
			hi = k + 1
			break
		}
	}
	d.lo, d.hi = lo, hi
	return d, true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func (d decimal) isZero() bool { return d.lo == d.hi }

func (d decimal) sign() int {
	switch {
	case d.isZero():
		return 0
	case d.neg:
		return -1
	}
	return 1
}

// ndigits returns the number of significant digits.
func (d decimal) ndigits() int {
	n := d.hi - d.lo
	if strings.IndexByte(d.s[d.lo:d.hi], '.') >= 0 {
		n--
	}
	return n
}

// cmpDecimal compares two decimals exactly: -1, 0 or +1.
func cmpDecimal(a, b decimal) int {
	sa, sb := a.sign(), b.sign()
	if sa != sb {
		if sa < sb {
			return -1
		}
		return 1
	}
	if sa == 0 {
		return 0
	}
	m := cmpMagnitude(a, b)
	if sa < 0 {
		return -m
	}
	return m
}

func cmpMagnitude(a, b decimal) int {
	if a.exp != b.exp {
		if a.exp < b.exp {
			return -1
		}
		return 1
	}
	i, j := a.lo, b.lo
	for {
		if i < a.hi && a.s[i] == '.' {
			i++
		}
		if j < b.hi && b.s[j] == '.' {
			j++
		}
		switch {
		case i == a.hi && j == b.hi:
			return 0
		case i == a.hi:
			return -1 // b has more (non-zero) digits
		case j == b.hi:
			return 1
		case a.s[i] != b.s[j]:
			if a.s[i] < b.s[j] {
				return -1
			}
			return 1
		}
		i++
		j++
	}
}

// isInteger reports whether d has no fractional part.
func (d decimal) isInteger() bool { return d.isZero() || d.exp >= d.ndigits() }

// Canonical number text, used as index key: integers as plain digits up to
// maxPlainDigits digits, other numbers as plain decimals when the exponent
// is small, else in scientific notation. Two numbers have the same
// canonical text exactly when they are equal.
const (
	maxPlainDigits = 30
	minPlainExp    = -10
)

// appendCanonical appends d's canonical text to b.
func (d decimal) appendCanonical(b []byte) []byte {
	if d.isZero() {
		return append(b, '0')
	}
	if d.neg {
		b = append(b, '-')
	}
	n := d.ndigits()
	digit := func(b []byte, from, to int) []byte {
		k := 0
		for i := d.lo; i < d.hi; i++ {
			c := d.s[i]
			if c == '.' {
				continue
			}
			if k >= from && k < to {
				b = append(b, c)
			}
			k++
		}
		return b
	}
	switch {
	case d.exp >= n && d.exp <= maxPlainDigits:
		b = digit(b, 0, n)
		for k := n; k < d.exp; k++ {
			b = append(b, '0')
		}
	case d.exp > 0 && d.exp < n:
		b = digit(b, 0, d.exp)
		b = append(b, '.')
		b = digit(b, d.exp, n)
	case d.exp <= 0 && d.exp > minPlainExp:
		b = append(b, '0', '.')
		for k := d.exp; k < 0; k++ {
			b = append(b, '0')
		}
		b = digit(b, 0, n)
	default:
		b = digit(b, 0, 1)
		if n > 1 {
			b = append(b, '.')
			b = digit(b, 1, n)
		}
		b = append(b, 'e')
		b = strconv.AppendInt(b, int64(d.exp-1), 10)
	}
	return b
}

// isPlainInt reports whether s is an integer written as its canonical text:
// an optional '-', no leading zeros, not "-0", at most maxPlainDigits digits.
func isPlainInt(s string) bool {
	d := s
	if len(d) > 0 && d[0] == '-' {
		d = d[1:]
		if d == "0" {
			return false
		}
	}
	if len(d) == 0 || len(d) > maxPlainDigits || (d[0] == '0' && len(d) > 1) {
		return false
	}
	for i := 0; i < len(d); i++ {
		if !isDigit(d[i]) {
			return false
		}
	}
	return true
}

// parseSmallInt parses a plain integer of at most 18 digits without
// allocating; ok is false for anything else.
func parseSmallInt(s string) (int64, bool) {
	d := s
	neg := false
	if len(d) > 0 && (d[0] == '-' || d[0] == '+') {
		neg = d[0] == '-'
		d = d[1:]
	}
	if len(d) == 0 || len(d) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(d); i++ {
		c := d[i]
		if !isDigit(c) {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if neg {
		n = -n
	}
	return n, true
}

// operand is one filter value, with every form a row value may be compared
// to computed when the filter is parsed.
type operand struct {
	raw    string  // the value as written; compared to text
	num    decimal // raw as a number, when isNum
	isNum  bool
	small  int64 // raw as a small integer, when isSmall (fast path)
	hasInt bool
	b      bool // raw as a boolean, when isBool
	isBool bool
	js     string // canonical JSON of raw, when raw is a JSON object or array
	isJS   bool
	keys   []string // the index keys a row value equal to this one may have
}

func newOperand(raw string) operand {
	o := operand{raw: raw}
	if d, ok := parseDecimal(raw); ok {
		o.num, o.isNum = d, true
		o.small, o.hasInt = parseSmallInt(raw)
	}
	switch {
	case strings.EqualFold(raw, "true"):
		o.b, o.isBool = true, true
	case strings.EqualFold(raw, "false"):
		o.isBool = true
	}
	if t := strings.TrimSpace(raw); len(t) > 0 && (t[0] == '{' || t[0] == '[') {
		if v, err := decodeJSON([]byte(t)); err == nil {
			o.js, o.isJS = string(appendJSON(nil, v)), true
		}
	}
	// Index keys: a text row value equal to raw has key raw; a number, its
	// canonical text; a boolean, "true" or "false"; an object or array, its
	// canonical JSON.
	o.keys = []string{raw}
	if o.isNum {
		o.keys = appendKey(o.keys, string(o.num.appendCanonical(nil)))
	}
	if o.isBool {
		o.keys = appendKey(o.keys, strconv.FormatBool(o.b))
	}
	if o.isJS {
		o.keys = appendKey(o.keys, o.js)
	}
	return o
}

func appendKey(keys []string, k string) []string {
	if slices.Contains(keys, k) {
		return keys
	}
	return append(keys, k)
}

// decodeJSON decodes one JSON value with numbers as json.Number; anything
// but white space after it is an error.
func decodeJSON(raw []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(raw[dec.InputOffset():])) != 0 {
		return nil, errTrailing
	}
	return v, nil
}

var errTrailing = errors.New("data after the JSON value")

// numberText returns the text of a Go number held in a Row built by hand
// rather than by DecodeRow (which only makes json.Number).
func numberText(x any) (string, bool) {
	switch n := x.(type) {
	case json.Number:
		return string(n), true
	case float64:
		if math.IsInf(n, 0) || math.IsNaN(n) {
			return "", false
		}
		return strconv.FormatFloat(n, 'g', -1, 64), true
	case float32:
		f := float64(n)
		if math.IsInf(f, 0) || math.IsNaN(f) {
			return "", false
		}
		return strconv.FormatFloat(f, 'g', -1, 32), true
	case int:
		return strconv.Itoa(n), true
	case int8:
		return strconv.FormatInt(int64(n), 10), true
	case int16:
		return strconv.FormatInt(int64(n), 10), true
	case int32:
		return strconv.FormatInt(int64(n), 10), true
	case int64:
		return strconv.FormatInt(n, 10), true
	case uint:
		return strconv.FormatUint(uint64(n), 10), true
	case uint8:
		return strconv.FormatUint(uint64(n), 10), true
	case uint16:
		return strconv.FormatUint(uint64(n), 10), true
	case uint32:
		return strconv.FormatUint(uint64(n), 10), true
	case uint64:
		return strconv.FormatUint(n, 10), true
	}
	return "", false
}

// compare compares row value x (not nil) with o. ok is false when they
// cannot be compared: different kinds, or an ordering asked of JSON objects
// and arrays, which only compare for equality.
func compare(x any, o *operand, ordered bool) (c int, ok bool) {
	switch v := x.(type) {
	case string:
		return strings.Compare(v, o.raw), true
	case json.Number:
		return compareNumber(string(v), o)
	case bool:
		if !o.isBool {
			return 0, false
		}
		switch {
		case v == o.b:
			return 0, true
		case !v:
			return -1, true
		}
		return 1, true
	case map[string]any, []any:
		if ordered || !o.isJS {
			return 0, false
		}
		if string(appendJSON(nil, v)) == o.js {
			return 0, true
		}
		return 1, true
	}
	if s, isNum := numberText(x); isNum {
		return compareNumber(s, o)
	}
	return 0, false
}

func compareNumber(s string, o *operand) (int, bool) {
	if !o.isNum {
		return 0, false
	}
	if o.hasInt {
		if n, ok := parseSmallInt(s); ok {
			switch {
			case n < o.small:
				return -1, true
			case n > o.small:
				return 1, true
			}
			return 0, true
		}
	}
	d, ok := parseDecimal(s)
	if !ok {
		return 0, false
	}
	return cmpDecimal(d, o.num), true
}

// keyBuf is the size of the stack buffer row keys are built in.
const keyBuf = 64

// rowKey returns the index key of row value x: in s, or in b (built in buf)
// when it had to be built. ok is false for null, which no eq or in matches.
// Text and integers in canonical form, the common cases, cost nothing.
func rowKey(x any, buf []byte) (s string, b []byte, ok bool) {
	switch v := x.(type) {
	case nil:
		return "", nil, false
	case string:
		return v, nil, true
	case bool:
		if v {
			return "true", nil, true
		}
		return "false", nil, true
	case json.Number:
		return numberKey(string(v), buf)
	case map[string]any, []any:
		return "", appendJSON(buf[:0], v), true
	}
	if s, isNum := numberText(x); isNum {
		return numberKey(s, buf)
	}
	return "", nil, false
}

func numberKey(s string, buf []byte) (string, []byte, bool) {
	if isPlainInt(s) {
		return s, nil, true
	}
	d, ok := parseDecimal(s)
	if !ok {
		return s, nil, true
	}
	return "", d.appendCanonical(buf[:0]), true
}

// appendJSON appends the canonical JSON text of a decoded JSON value: object
// keys sorted, numbers in canonical form, strings escaped minimally. Two
// values have the same canonical text exactly when they are equal as jsonb
// values.
func appendJSON(b []byte, v any) []byte {
	switch v := v.(type) {
	case nil:
		return append(b, "null"...)
	case bool:
		return strconv.AppendBool(b, v)
	case string:
		return appendJSONString(b, v)
	case []any:
		b = append(b, '[')
		for i, e := range v {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSON(b, e)
		}
		return append(b, ']')
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		b = append(b, '{')
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, k)
			b = append(b, ':')
			b = appendJSON(b, v[k])
		}
		return append(b, '}')
	}
	if s, isNum := numberText(v); isNum {
		if d, ok := parseDecimal(s); ok {
			return d.appendCanonical(b)
		}
		return append(b, s...)
	}
	// Not a JSON value (a Row built by hand with an odd type): render it
	// as a string that no JSON text equals.
	return appendJSONString(append(b, '!'), "?")
}

func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20:
				b = append(b, `\u00`...)
				b = append(b, "0123456789abcdef"[c>>4], "0123456789abcdef"[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		b = utf8.AppendRune(b, r) // invalid bytes become U+FFFD, as in encoding/json
		i += size
	}
	return append(b, '"')
}
