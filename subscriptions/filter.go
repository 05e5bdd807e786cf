package subscriptions

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
)

// ErrBadFilter is wrapped by every error about a filter: its syntax, an
// operator, a value that does not fit its column, an unknown column.
var ErrBadFilter = errors.New("bad filter")

// ErrUnknownColumn is wrapped by errors about a column the table lacks, in
// a filter (such errors wrap ErrBadFilter too, so test for this one first),
// a select list or a policy.
var ErrUnknownColumn = errors.New("unknown column")

// filterError is a filter error: it names the condition and why.
type filterError struct {
	cond    string // the condition as written, col=op.value
	reason  string
	unknown bool // about a column the table lacks
}

func (e *filterError) Error() string {
	return fmt.Sprintf("filter %q: %s", e.cond, e.reason)
}

func (e *filterError) Unwrap() []error {
	if e.unknown {
		return []error{ErrBadFilter, ErrUnknownColumn}
	}
	return []error{ErrBadFilter}
}

func badCond(cond, format string, args ...any) error {
	return &filterError{cond: cond, reason: fmt.Sprintf(format, args...)}
}

type op uint8

const (
	opEq op = iota + 1
	opNeq
	opLt
	opLte
	opGt
	opGte
	opIn
	opIs
)

var opNames = [...]string{opEq: "eq", opNeq: "neq", opLt: "lt", opLte: "lte", opGt: "gt", opGte: "gte", opIn: "in", opIs: "is"}

func (o op) String() string { return opNames[o] }

func parseOp(s string) (op, bool) {
	for o, name := range opNames {
		if name != "" && name == s {
			return op(o), true
		}
	}
	return 0, false
}

// The values of is.
const (
	isNull  = "null"
	isTrue  = "true"
	isFalse = "false"
)

// cond is one parsed condition.
type cond struct {
	col  string
	op   op
	v    operand   // the value, for every op but in
	list []operand // the values of in
}

// Filter is a parsed PostgREST-style filter: conditions that must all hold.
// The zero Filter has no condition and matches every row. A Filter is
// immutable and safe to share between goroutines.
type Filter struct {
	conds []cond
}

// Condition is one condition of a filter, as written: Column=Op.Value, or
// Column=in.(Values...).
type Condition struct {
	Column string
	Op     string   // eq neq lt lte gt gte in is
	Value  string   // for every op but in; is: null, true or false
	Values []string // for in
}

// Conditions returns the filter's conditions in order.
func (f Filter) Conditions() []Condition {
	cs := make([]Condition, len(f.conds))
	for i, c := range f.conds {
		cs[i] = Condition{Column: c.col, Op: c.op.String()}
		if c.op == opIn {
			cs[i].Values = make([]string, len(c.list))
			for j, o := range c.list {
				cs[i].Values[j] = o.raw
			}
		} else {
			cs[i].Value = c.v.raw
		}
	}
	return cs
}

// IsZero reports whether f has no condition (matches every row).
func (f Filter) IsZero() bool { return len(f.conds) == 0 }

// ParseFilter parses a filter written as PostgREST query parameters:
// column=op.value conditions joined by '&', e.g.
// "status=eq.open&total=gt.10&id=in.(1,2,3)&deleted_at=is.null". Each
// column and value is URL-unescaped (url.QueryUnescape), so "%26" and "%3D"
// stand for '&' and '=', and '+' for a space; empty parts are skipped. ""
// is the empty filter.
//
// The operators are eq, neq, lt, lte, gt, gte, in and is. A value is
// everything after the operator's '.', dots included (eq.1.5 is "1.5"), and
// may be empty (eq. is the empty string). in takes a parenthesized list,
// in.(1,2,3), whose items may be double-quoted to hold commas, quotes (\")
// and backslashes (\\): in.("a,b","say \"hi\""); an empty item must be
// written "". is takes null, true or false.
func ParseFilter(s string) (Filter, error) {
	var f Filter
	for part := range strings.SplitSeq(s, "&") {
		if part == "" {
			continue
		}
		rawCol, rawVal, ok := strings.Cut(part, "=")
		if !ok {
			return Filter{}, badCond(part, "no '=' (want column=op.value, e.g. status=eq.open)")
		}
		col, err := url.QueryUnescape(rawCol)
		if err != nil {
			return Filter{}, badCond(part, "bad escape in column: %v", err)
		}
		val, err := url.QueryUnescape(rawVal)
		if err != nil {
			return Filter{}, badCond(part, "bad escape in value: %v", err)
		}
		c, err := parseCond(col, val)
		if err != nil {
			return Filter{}, err
		}
		f.conds = append(f.conds, c)
	}
	return f, nil
}

// FilterFromQuery reads a filter from query parameters, as SSE and long
// polling take it: every parameter whose name is not in reserved is a
// condition name=op.value; a name may be repeated. Names and values are
// already unescaped. Conditions are taken in the order of their sorted
// names, then of their values.
func FilterFromQuery(q url.Values, reserved []string) (Filter, error) {
	names := make([]string, 0, len(q))
	for name := range q {
		if !slices.Contains(reserved, name) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	var f Filter
	for _, name := range names {
		for _, val := range q[name] {
			c, err := parseCond(name, val)
			if err != nil {
				return Filter{}, err
			}
			f.conds = append(f.conds, c)
		}
	}
	return f, nil
}

// parseCond parses one unescaped condition col=val.
func parseCond(col, val string) (cond, error) {
	text := col + "=" + val
	if col == "" {
		return cond{}, badCond(text, "empty column name (want column=op.value)")
	}
	name, v, ok := strings.Cut(val, ".")
	if !ok || name == "" {
		example := val
		if ok || val == "" {
			example = "value"
		}
		return cond{}, badCond(text, "no operator (want column=op.value, e.g. %s=eq.%s)", col, example)
	}
	o, ok := parseOp(name)
	if !ok {
		return cond{}, badCond(text, "unknown operator %q (want eq, neq, lt, lte, gt, gte, in or is)", name)
	}
	c := cond{col: col, op: o}
	switch o {
	case opIs:
		switch lv := strings.ToLower(v); lv {
		case isNull, isTrue, isFalse:
			c.v = operand{raw: lv}
		default:
			return cond{}, badCond(text, "is takes null, true or false, not %q", v)
		}
	case opIn:
		items, err := parseList(v)
		if err != nil {
			return cond{}, badCond(text, "%v", err)
		}
		c.list = make([]operand, len(items))
		for i, item := range items {
			c.list[i] = newOperand(item)
		}
	default:
		c.v = newOperand(v)
	}
	return c, nil
}

// parseList parses the value of in: (item,item,...).
func parseList(v string) ([]string, error) {
	if len(v) < 2 || v[0] != '(' || v[len(v)-1] != ')' {
		return nil, fmt.Errorf("in takes a parenthesized list, e.g. in.(1,2,3), not %q", v)
	}
	in := v[1 : len(v)-1]
	if in == "" {
		return nil, errors.New("in needs at least one value")
	}
	var items []string
	for i := 0; ; {
		if i < len(in) && in[i] == '"' {
			var b strings.Builder
			closed := false
			for i++; i < len(in); i++ {
				ch := in[i]
				if ch == '\\' && i+1 < len(in) {
					i++
					b.WriteByte(in[i])
					continue
				}
				if ch == '"' {
					closed = true
					i++
					break
				}
				b.WriteByte(ch)
			}
			if !closed {
				return nil, errors.New("unterminated quote in the in list")
			}
			items = append(items, b.String())
			if i < len(in) && in[i] != ',' {
				return nil, fmt.Errorf("unexpected %q after a quoted item of the in list (want ',' or ')')", in[i:])
			}
		} else {
			j := strings.IndexByte(in[i:], ',')
			if j < 0 {
				j = len(in) - i
			}
			if j == 0 {
				return nil, errors.New(`empty item in the in list (write "" for the empty string)`)
			}
			items = append(items, in[i:i+j])
			i += j
		}
		if i == len(in) {
			return items, nil
		}
		i++ // the ','
	}
}

// String renders f in canonical form: conditions in order, joined by '&',
// escaped just enough for ParseFilter to read them back.
func (f Filter) String() string {
	var b strings.Builder
	for i := range f.conds {
		if i > 0 {
			b.WriteByte('&')
		}
		f.conds[i].write(&b, true)
	}
	return b.String()
}

// write renders c; escaped, as in Filter.String, else as plain text for
// error messages.
func (c *cond) write(b *strings.Builder, escaped bool) {
	var v string
	if c.op == opIn {
		var l strings.Builder
		l.WriteByte('(')
		for i, o := range c.list {
			if i > 0 {
				l.WriteByte(',')
			}
			writeItem(&l, o.raw)
		}
		l.WriteByte(')')
		v = l.String()
	} else {
		v = c.v.raw
	}
	if escaped {
		writeEscaped(b, c.col, true)
	} else {
		b.WriteString(c.col)
	}
	b.WriteByte('=')
	b.WriteString(c.op.String())
	b.WriteByte('.')
	if escaped {
		writeEscaped(b, v, false)
	} else {
		b.WriteString(v)
	}
}

func (c *cond) text() string {
	var b strings.Builder
	c.write(&b, false)
	return b.String()
}

// writeItem writes one item of an in list, quoted when it must be.
func writeItem(b *strings.Builder, s string) {
	if s != "" && !strings.ContainsAny(s, `,"\`) {
		b.WriteString(s)
		return
	}
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('"')
}

// writeEscaped percent-escapes what url.QueryUnescape or the split on '&'
// (and '=' in a column) would change, plus spaces and control characters so
// the text can be pasted into a URL.
func writeEscaped(b *strings.Builder, s string, isCol bool) {
	const hex = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c == 0x7f || c == '%' || c == '&' || c == '+' || c == '#' || (isCol && c == '=') {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&0xf])
			continue
		}
		b.WriteByte(c)
	}
}

// And returns the filter holding the conditions of f and then of g.
func (f Filter) And(g Filter) Filter {
	if len(g.conds) == 0 {
		return f
	}
	if len(f.conds) == 0 {
		return g
	}
	return Filter{conds: slices.Concat(f.conds, g.conds)}
}

// Match reports whether row satisfies every condition of f. A column
// missing from row is null; a nil row (one a change does not carry)
// matches only the empty filter.
func (f Filter) Match(row Row) bool {
	return matchRow(f.conds, row)
}

// match evaluates c on row, with SQL's treatment of null: only is.null
// matches it, and a value of another kind than the filter's (a number
// against eq.open) matches nothing.
func (c *cond) match(row Row) bool {
	x, present := row[c.col]
	if c.op == opIs {
		switch c.v.raw {
		case isNull:
			return !present || x == nil
		case isTrue:
			b, ok := x.(bool)
			return ok && b
		default:
			b, ok := x.(bool)
			return ok && !b
		}
	}
	if x == nil {
		return false
	}
	switch c.op {
	case opEq:
		r, ok := compare(x, &c.v, false)
		return ok && r == 0
	case opNeq:
		r, ok := compare(x, &c.v, false)
		return ok && r != 0
	case opLt:
		r, ok := compare(x, &c.v, true)
		return ok && r < 0
	case opLte:
		r, ok := compare(x, &c.v, true)
		return ok && r <= 0
	case opGt:
		r, ok := compare(x, &c.v, true)
		return ok && r > 0
	case opGte:
		r, ok := compare(x, &c.v, true)
		return ok && r >= 0
	case opIn:
		for i := range c.list {
			if r, ok := compare(x, &c.list[i], false); ok && r == 0 {
				return true
			}
		}
	}
	return false
}
