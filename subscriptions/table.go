package subscriptions

import (
	"errors"
	"fmt"
	"strings"
)

// Column is one column of a captured table.
type Column struct {
	Name string
	// Type is the PostgreSQL type name as in pg_type.typname: int2 int4
	// int8 numeric float4 float8 text varchar bpchar bool timestamptz
	// timestamp date uuid jsonb json ..., arrays as _int4 etc. Types this
	// package does not know (enums, domains, inet, ...) are treated as text,
	// which is how to_jsonb renders them.
	Type string
}

// ErrUnknownTable is wrapped by errors about a table that does not exist or
// is not captured.
var ErrUnknownTable = errors.New("table not captured")

// Table describes a captured table, as the caller read it from the catalog.
type Table struct {
	Name    string   // "schema.table", as events show it
	Columns []Column // in table order
	Key     []string // primary key columns
}

// column returns the named column, or nil.
func (t *Table) column(name string) *Column {
	for i := range t.Columns {
		if t.Columns[i].Name == name {
			return &t.Columns[i]
		}
	}
	return nil
}

// typeClass is how values of a column type are written and compared.
type typeClass uint8

const (
	classText typeClass = iota
	classInt
	classNumber
	classBool
	classJSON
	classArray
	classUUID
	classDate
	classTimestamp
)

func classOf(typ string) typeClass {
	switch typ {
	case "int2", "int4", "int8":
		return classInt
	case "numeric", "float4", "float8":
		return classNumber
	case "bool":
		return classBool
	case "json", "jsonb":
		return classJSON
	case "uuid":
		return classUUID
	case "date":
		return classDate
	case "timestamp", "timestamptz":
		return classTimestamp
	}
	if strings.HasPrefix(typ, "_") {
		return classArray
	}
	return classText
}

// intRange holds the bounds of the integer types, as decimals.
var intRange = map[string][2]string{
	"int2": {"-32768", "32767"},
	"int4": {"-2147483648", "2147483647"},
	"int8": {"-9223372036854775808", "9223372036854775807"},
}

// Check reports the first condition of f that does not fit table t: a
// column t lacks (the error wraps ErrUnknownColumn and ErrBadFilter), or an
// operator or value the column's type cannot take (ErrBadFilter). Values
// must be what the column holds: numbers for int2, int4, int8 (integers in
// range), numeric, float4 and float8; true or false for bool; lower-case
// uuids; dates as YYYY-MM-DD, timestamps starting so. json, jsonb and array
// columns take only eq, neq and is; an array's value is written as JSON,
// as to_jsonb renders it (tags=eq.["a","b"]), not as PostgreSQL's {a,b}.
// is.true and is.false need a bool column.
func (f Filter) Check(t *Table) error {
	return f.check(t, nil)
}

// check is Check, skipping the values for which skip reports true (policy
// placeholders, checked once substituted).
func (f Filter) check(t *Table, skip func(raw string) bool) error {
	for i := range f.conds {
		c := &f.conds[i]
		col := t.column(c.col)
		if col == nil {
			return &filterError{cond: c.text(), reason: fmt.Sprintf("table %s has no column %s", t.Name, c.col), unknown: true}
		}
		if err := c.check(col, skip); err != nil {
			return err
		}
	}
	return nil
}

func (c *cond) check(col *Column, skip func(string) bool) error {
	class := classOf(col.Type)
	if c.op == opIs {
		if c.v.raw != isNull && class != classBool {
			return badCond(c.text(), "%s is %s; is.true and is.false need a bool column", col.Name, col.Type)
		}
		return nil
	}
	if class == classJSON || class == classArray {
		if c.op != opEq && c.op != opNeq {
			return badCond(c.text(), "%s is %s; only eq, neq and is work on it", col.Name, col.Type)
		}
	}
	if c.op != opIn {
		return checkValue(c, col, class, &c.v, skip)
	}
	for i := range c.list {
		if err := checkValue(c, col, class, &c.list[i], skip); err != nil {
			return err
		}
	}
	return nil
}

func checkValue(c *cond, col *Column, class typeClass, o *operand, skip func(string) bool) error {
	if skip != nil && skip(o.raw) {
		return nil
	}
	bad := func(format string, args ...any) error {
		return badCond(c.text(), "%s is %s, %q %s", col.Name, col.Type, o.raw, fmt.Sprintf(format, args...))
	}
	switch class {
	case classInt:
		if !o.isNum {
			return bad("is not a number")
		}
		if !o.num.isInteger() {
			return bad("is not an integer")
		}
		r := intRange[col.Type]
		lo, _ := parseDecimal(r[0])
		hi, _ := parseDecimal(r[1])
		if cmpDecimal(o.num, lo) < 0 || cmpDecimal(o.num, hi) > 0 {
			return bad("is out of range (%s to %s)", r[0], r[1])
		}
	case classNumber:
		if !o.isNum {
			return bad("is not a number")
		}
	case classBool:
		if !o.isBool {
			return bad("is not true or false")
		}
	case classArray:
		if !o.isJS || !strings.HasPrefix(strings.TrimSpace(o.raw), "[") {
			return bad(`is not a JSON array (write arrays as JSON, e.g. ["a","b"] or [1,2])`)
		}
	case classUUID:
		if !isUUID(o.raw) {
			return bad("is not a lower-case uuid (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, as PostgreSQL renders it)")
		}
	case classDate:
		if len(o.raw) != 10 || !isDate(o.raw) {
			return bad("is not a date (YYYY-MM-DD)")
		}
	case classTimestamp:
		if !isDate(o.raw) {
			return bad("is not a timestamp (ISO 8601, e.g. 2026-11-27T14:05:41Z)")
		}
	}
	return nil
}

// isUUID reports whether s is a uuid as PostgreSQL renders one.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !isDigit(c) && (c < 'a' || c > 'f') {
				return false
			}
		}
	}
	return true
}

// isDate reports whether s starts with a date YYYY-MM-DD.
func isDate(s string) bool {
	if len(s) < 10 || s[4] != '-' || s[7] != '-' {
		return false
	}
	for _, i := range []int{0, 1, 2, 3, 5, 6, 8, 9} {
		if !isDigit(s[i]) {
			return false
		}
	}
	return true
}
