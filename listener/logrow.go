package listener

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"unicode/utf8"
)

// errBadLogJSON reports a log value that is not the JSON capture writes.
var errBadLogJSON = errors.New("malformed row JSON in the change log")

// expandLogRow appends the changes one row of pgfeed.changes holds to dst.
// A row-level capture wrote one change: new and old are JSON objects (or
// NULL). A statement-level capture wrote a JSON array of rows in new
// (inserts) or old (deletes), one change each, in array order. Values are
// rendered as to_jsonb renders them (see canonicalJSON); the key is built
// from keyCols, the table's key columns when capture was enabled.
func expandLogRow(dst []Change, base Change, keyCols []string, newRaw, oldRaw []byte) ([]Change, error) {
	if base.Op == "truncate" {
		return append(dst, base), nil
	}
	n, err := canonicalJSON(nil, newRaw)
	if err != nil {
		return dst, fmt.Errorf("new row: %w", err)
	}
	o, err := canonicalJSON(nil, oldRaw)
	if err != nil {
		return dst, fmt.Errorf("old row: %w", err)
	}
	chunk, isNew := n, true
	if chunk == nil {
		chunk, isNew = o, false
	}
	if len(chunk) == 0 || chunk[0] != '[' {
		c := base
		c.New, c.Old = n, o
		if c.Key, err = keyOf(chunk, keyCols); err != nil {
			return dst, err
		}
		return append(dst, c), nil
	}
	if n != nil && o != nil {
		return dst, fmt.Errorf("%w: a chunk of rows in both new and old", errBadLogJSON)
	}
	for i := 1; i < len(chunk)-1; {
		end, err := skipValue(chunk, i)
		if err != nil {
			return dst, err
		}
		row := chunk[i:end:end]
		c := base
		if isNew {
			c.New = row
		} else {
			c.Old = row
		}
		if c.Key, err = keyOf(row, keyCols); err != nil {
			return dst, err
		}
		dst = append(dst, c)
		i = end
		if i < len(chunk)-1 {
			if chunk[i] != ',' {
				return dst, fmt.Errorf("%w: bad array", errBadLogJSON)
			}
			i++
		}
	}
	return dst, nil
}

// keyOf returns {"k1":v1,...} for the key columns of a compact row object
// (null for a column the row lacks), or nil without key columns.
func keyOf(row []byte, keyCols []string) (json.RawMessage, error) {
	if len(keyCols) == 0 || row == nil {
		return nil, nil
	}
	vals := make([][]byte, len(keyCols))
	err := EachMember(row, func(q, v []byte) error {
		name, err := MemberName(q)
		if err != nil {
			return err
		}
		if i := slices.Index(keyCols, name); i >= 0 && vals[i] == nil {
			vals[i] = v
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	key := []byte{'{'}
	for i, col := range keyCols {
		if i > 0 {
			key = append(key, ',')
		}
		key = appendJSONString(key, []byte(col))
		key = append(key, ':')
		if vals[i] == nil {
			key = append(key, "null"...)
		} else {
			key = append(key, vals[i]...)
		}
	}
	return append(key, '}'), nil
}

// skipValue returns the end of the compact JSON value starting at b[i].
func skipValue(b []byte, i int) (int, error) {
	if i >= len(b) {
		return 0, fmt.Errorf("%w: truncated", errBadLogJSON)
	}
	switch b[i] {
	case '"':
		for j := i + 1; j < len(b); j++ {
			switch b[j] {
			case '\\':
				j++
			case '"':
				return j + 1, nil
			}
		}
		return 0, fmt.Errorf("%w: unterminated string", errBadLogJSON)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				end, err := skipValue(b, j)
				if err != nil {
					return 0, err
				}
				j = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1, nil
				}
			}
		}
		return 0, fmt.Errorf("%w: unterminated %c", errBadLogJSON, b[i])
	default:
		j := i
		for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ':' && !isSpace(b[j]) {
			j++
		}
		if j == i {
			return 0, fmt.Errorf("%w: empty value", errBadLogJSON)
		}
		return j, nil
	}
}

// canonicalJSON appends a logged row (a JSON object), or a chunk of them (a
// JSON array), as to_jsonb would have rendered it: capture stores to_json
// text, which differs from to_jsonb's in the values only. A row keeps its
// members in column order (to_json's, and the logical source's), each
// value rewritten as to_jsonb writes it: numbers as numeric writes them
// (to_json writes floats as float8out does: 1e+20, -0), and nested objects
// (json and composite columns, arrays of them) in jsonb's form (keys
// sorted, the last of duplicates, strings escaped again). The output is
// compact. NULL (nil, empty or null src) gives nil.
func canonicalJSON(dst, src []byte) ([]byte, error) {
	src = bytes.TrimSpace(src)
	if len(src) == 0 || string(src) == "null" {
		return nil, nil
	}
	if !json.Valid(src) {
		return nil, fmt.Errorf("%w: invalid JSON", errBadLogJSON)
	}
	if dst == nil {
		dst = make([]byte, 0, len(src))
	}
	switch src[0] {
	case '{':
		return appendRow(dst, src)
	case '[':
		dst = append(dst, '[')
		n := 0
		err := eachElement(src, func(row []byte) error {
			if n++; n > 1 {
				dst = append(dst, ',')
			}
			var err error
			dst, err = appendRow(dst, row)
			return err
		})
		if err != nil {
			return nil, err
		}
		return append(dst, ']'), nil
	}
	return nil, fmt.Errorf("%w: not a row", errBadLogJSON)
}

// appendRow appends a row object, its values as to_jsonb writes them.
func appendRow(dst, obj []byte) ([]byte, error) {
	if len(obj) == 0 || obj[0] != '{' {
		return dst, fmt.Errorf("%w: row is not an object", errBadLogJSON)
	}
	dst = append(dst, '{')
	n := 0
	err := EachMember(obj, func(name, value []byte) error {
		if n++; n > 1 {
			dst = append(dst, ',')
		}
		var err error
		if dst, err = appendString(dst, name); err != nil {
			return err
		}
		dst = append(dst, ':')
		dst, err = appendValue(dst, value)
		return err
	})
	if err != nil {
		return dst, err
	}
	return append(dst, '}'), nil
}

// appendValue appends one column's value as to_jsonb writes it.
func appendValue(dst, v []byte) ([]byte, error) {
	switch c := v[0]; {
	case c == '{' || c == '[':
		return appendAsJSONB(dst, v)
	case c == '"':
		return appendString(dst, v)
	case c == 't' || c == 'f' || c == 'n':
		return append(dst, v...), nil
	default:
		return appendNumeric(dst, v)
	}
}

// appendString appends a JSON string escaped as escape_json does (to_json
// escapes text that way already; a json column keeps its own escapes).
func appendString(dst, q []byte) ([]byte, error) {
	if !bytes.ContainsRune(q, '\\') {
		return append(dst, q...), nil
	}
	var s string
	if err := json.Unmarshal(q, &s); err != nil {
		return dst, fmt.Errorf("%w: bad string", errBadLogJSON)
	}
	return appendJSONString(dst, []byte(s)), nil
}

// MemberName decodes a raw member name from EachMember (invalid UTF-8
// becomes U+FFFD, as encoding/json decodes it).
func MemberName(q []byte) (string, error) {
	if len(q) >= 2 && !bytes.ContainsRune(q, '\\') && utf8.Valid(q) {
		return string(q[1 : len(q)-1]), nil
	}
	var s string
	if err := json.Unmarshal(q, &s); err != nil {
		return "", fmt.Errorf("%w: bad member name", errBadLogJSON)
	}
	return s, nil
}

func isSpace(c byte) bool { return c == ' ' || c == '\n' || c == '\t' || c == '\r' }

func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// EachMember calls fn with the raw name (a JSON string, quotes and escapes
// included) and the raw value of each member of the JSON object obj, in
// order, without copying; obj may hold whitespace between tokens (not
// before its opening brace). It does not validate obj as a whole: call it on
// JSON known to be valid, as the listener's output is.
func EachMember(obj []byte, fn func(name, value []byte) error) error {
	if len(obj) < 2 || obj[0] != '{' {
		return fmt.Errorf("%w: not an object", errBadLogJSON)
	}
	i := skipSpace(obj, 1)
	if i < len(obj) && obj[i] == '}' {
		return nil
	}
	for i < len(obj) {
		if obj[i] != '"' {
			return fmt.Errorf("%w: bad member name", errBadLogJSON)
		}
		end, err := skipValue(obj, i)
		if err != nil {
			return err
		}
		name := obj[i:end]
		if i = skipSpace(obj, end); i >= len(obj) || obj[i] != ':' {
			return fmt.Errorf("%w: bad object", errBadLogJSON)
		}
		i = skipSpace(obj, i+1)
		vend, err := skipValue(obj, i)
		if err != nil {
			return err
		}
		if err := fn(name, obj[i:vend]); err != nil {
			return err
		}
		switch i = skipSpace(obj, vend); {
		case i < len(obj) && obj[i] == ',':
			i = skipSpace(obj, i+1)
		case i < len(obj) && obj[i] == '}':
			return nil
		default:
			return fmt.Errorf("%w: bad object", errBadLogJSON)
		}
	}
	return fmt.Errorf("%w: truncated object", errBadLogJSON)
}

// eachElement calls fn with each element of a JSON array, which may hold
// whitespace.
func eachElement(arr []byte, fn func(el []byte) error) error {
	i := skipSpace(arr, 1)
	if i < len(arr) && arr[i] == ']' {
		return nil
	}
	for i < len(arr) {
		end, err := skipValue(arr, i)
		if err != nil {
			return err
		}
		if err := fn(arr[i:end]); err != nil {
			return err
		}
		switch i = skipSpace(arr, end); {
		case i < len(arr) && arr[i] == ',':
			i = skipSpace(arr, i+1)
		case i < len(arr) && arr[i] == ']':
			return nil
		default:
			return fmt.Errorf("%w: bad array", errBadLogJSON)
		}
	}
	return fmt.Errorf("%w: truncated array", errBadLogJSON)
}

// appendNumeric appends a JSON number as numeric would print it: without an
// exponent, and a zero without sign, with the scale it was written with.
func appendNumeric(dst, num []byte) ([]byte, error) {
	switch {
	case isZeroNumber(num):
		return appendZero(dst, num), nil
	case !bytes.ContainsAny(num, "eE"):
		return append(dst, num...), nil
	default:
		return appendPlainDecimal(dst, num)
	}
}
