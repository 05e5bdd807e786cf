package listener

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
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
	err := eachMember(row, func(name string, v []byte) {
		if i := slices.Index(keyCols, name); i >= 0 && vals[i] == nil {
			vals[i] = v
		}
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

// eachMember calls fn with the name and compact value of each member of a
// compact JSON object.
func eachMember(obj []byte, fn func(name string, value []byte)) error {
	if len(obj) < 2 || obj[0] != '{' || obj[len(obj)-1] != '}' {
		return fmt.Errorf("%w: row is not an object", errBadLogJSON)
	}
	for i := 1; i < len(obj)-1; {
		end, err := skipValue(obj, i)
		if err != nil {
			return err
		}
		var name string
		if obj[i] != '"' || end >= len(obj) || obj[end] != ':' || json.Unmarshal(obj[i:end], &name) != nil {
			return fmt.Errorf("%w: bad member name", errBadLogJSON)
		}
		vstart := end + 1
		vend, err := skipValue(obj, vstart)
		if err != nil {
			return err
		}
		fn(name, obj[vstart:vend])
		i = vend
		if i < len(obj)-1 {
			if obj[i] != ',' {
				return fmt.Errorf("%w: bad object", errBadLogJSON)
			}
			i++
		}
	}
	return nil
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
		for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ':' {
			j++
		}
		if j == i {
			return 0, fmt.Errorf("%w: empty value", errBadLogJSON)
		}
		return j, nil
	}
}

// canonicalJSON appends src compacted, with every number written as
// PostgreSQL's numeric writes it: capture stores to_json text, which writes
// float values as float8out does (1e+20, -0), where to_jsonb converts them
// to numeric (100000000000000000000, 0). NULL (nil or empty src) gives nil.
func canonicalJSON(dst, src []byte) ([]byte, error) {
	src = bytes.TrimSpace(src)
	if len(src) == 0 {
		return nil, nil
	}
	if !json.Valid(src) {
		return nil, fmt.Errorf("%w: invalid JSON", errBadLogJSON)
	}
	if dst == nil {
		dst = make([]byte, 0, len(src))
	}
	for i := 0; i < len(src); {
		c := src[i]
		switch {
		case c == ' ' || c == '\n' || c == '\t' || c == '\r':
			i++
		case c == '"':
			end, err := skipValue(src, i)
			if err != nil {
				return nil, err
			}
			dst = append(dst, src[i:end]...)
			i = end
		case c == '-' || c >= '0' && c <= '9':
			j := i + 1
			for j < len(src) && bytes.IndexByte([]byte("0123456789.eE+-"), src[j]) >= 0 {
				j++
			}
			var err error
			if dst, err = appendNumeric(dst, src[i:j]); err != nil {
				return nil, err
			}
			i = j
		default:
			dst = append(dst, c)
			i++
		}
	}
	return dst, nil
}

// appendNumeric appends a JSON number as numeric would print it: without an
// exponent, and without the sign of a negative zero.
func appendNumeric(dst, num []byte) ([]byte, error) {
	start := len(dst)
	var err error
	if !bytes.ContainsAny(num, "eE") {
		dst = append(dst, num...)
	} else if dst, err = appendPlainDecimal(dst, num); err != nil {
		return dst, err
	}
	if out := dst[start:]; len(out) > 1 && out[0] == '-' && len(bytes.Trim(out[1:], "0.")) == 0 {
		dst = append(dst[:start], out[1:]...)
	}
	return dst, nil
}
