package subscriptions

import (
	"errors"
	"net/url"
	"reflect"
	"strings"
	"testing"
)

func TestParseFilter(t *testing.T) {
	tests := []struct {
		in   string
		want []Condition
		str  string // canonical form; "" = same as in
	}{
		{in: "", want: []Condition{}},
		{in: "&&", want: []Condition{}, str: ""},
		{in: "status=eq.open", want: []Condition{{Column: "status", Op: "eq", Value: "open"}}},
		{in: "status=neq.open", want: []Condition{{Column: "status", Op: "neq", Value: "open"}}},
		{in: "total=lt.10", want: []Condition{{Column: "total", Op: "lt", Value: "10"}}},
		{in: "total=lte.10", want: []Condition{{Column: "total", Op: "lte", Value: "10"}}},
		{in: "total=gt.10", want: []Condition{{Column: "total", Op: "gt", Value: "10"}}},
		{in: "total=gte.-1.5e3", want: []Condition{{Column: "total", Op: "gte", Value: "-1.5e3"}}},
		{in: "total=eq.1.5", want: []Condition{{Column: "total", Op: "eq", Value: "1.5"}}},
		{in: "host=eq.a.b.c", want: []Condition{{Column: "host", Op: "eq", Value: "a.b.c"}}},
		{in: "name=eq.", want: []Condition{{Column: "name", Op: "eq", Value: ""}}},
		{in: "deleted_at=is.null", want: []Condition{{Column: "deleted_at", Op: "is", Value: "null"}}},
		{in: "ok=is.TRUE", want: []Condition{{Column: "ok", Op: "is", Value: "true"}}, str: "ok=is.true"},
		{in: "ok=is.false", want: []Condition{{Column: "ok", Op: "is", Value: "false"}}},
		{in: "id=in.(1,2,3)", want: []Condition{{Column: "id", Op: "in", Values: []string{"1", "2", "3"}}}},
		{in: "id=in.(7)", want: []Condition{{Column: "id", Op: "in", Values: []string{"7"}}}},
		{
			in:   `s=in.("a,b",c,"")`,
			want: []Condition{{Column: "s", Op: "in", Values: []string{"a,b", "c", ""}}},
		},
		{
			in:   `s=in.("say \"hi\"","back\\slash",x\y)`,
			want: []Condition{{Column: "s", Op: "in", Values: []string{`say "hi"`, `back\slash`, `x\y`}}},
			str:  `s=in.("say%20\"hi\"","back\\slash","x\\y")`,
		},
		{in: `s=in.("q")`, want: []Condition{{Column: "s", Op: "in", Values: []string{"q"}}}, str: "s=in.(q)"},
		{in: "s=in.(a(b),c)", want: []Condition{{Column: "s", Op: "in", Values: []string{"a(b)", "c"}}}},
		{
			in:   "q=eq.a%26b%3Dc&r%3Dx=eq.1",
			want: []Condition{{Column: "q", Op: "eq", Value: "a&b=c"}, {Column: "r=x", Op: "eq", Value: "1"}},
			str:  "q=eq.a%26b=c&r%3Dx=eq.1",
		},
		{
			in:   "q=eq.a+b%20c%2B%25",
			want: []Condition{{Column: "q", Op: "eq", Value: "a b c+%"}},
			str:  "q=eq.a%20b%20c%2B%25",
		},
		{in: "x=eq.k=v", want: []Condition{{Column: "x", Op: "eq", Value: "k=v"}}},
		{
			in: "status=eq.open&total=gt.10&id=in.(1,2,3)&deleted_at=is.null",
			want: []Condition{
				{Column: "status", Op: "eq", Value: "open"},
				{Column: "total", Op: "gt", Value: "10"},
				{Column: "id", Op: "in", Values: []string{"1", "2", "3"}},
				{Column: "deleted_at", Op: "is", Value: "null"},
			},
		},
		{in: "a=eq.1&", want: []Condition{{Column: "a", Op: "eq", Value: "1"}}, str: "a=eq.1"},
		{in: "ünï=eq.çödé", want: []Condition{{Column: "ünï", Op: "eq", Value: "çödé"}}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			f, err := ParseFilter(tt.in)
			if err != nil {
				t.Fatalf("ParseFilter(%q): %v", tt.in, err)
			}
			if got := f.Conditions(); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("conditions = %#v, want %#v", got, tt.want)
			}
			want := tt.str
			if want == "" && len(tt.want) > 0 {
				want = tt.in
			}
			if got := f.String(); got != want {
				t.Errorf("String() = %q, want %q", got, want)
			}
			g, err := ParseFilter(f.String())
			if err != nil {
				t.Fatalf("reparse %q: %v", f.String(), err)
			}
			if !reflect.DeepEqual(g.Conditions(), f.Conditions()) {
				t.Errorf("reparse of %q = %#v, want %#v", f.String(), g.Conditions(), f.Conditions())
			}
		})
	}
}

func TestParseFilterErrors(t *testing.T) {
	tests := []struct {
		in   string
		want string // in the message
	}{
		{"status", `filter "status": no '='`},
		{"status&id=eq.1", `filter "status": no '='`},
		{"=eq.1", "empty column name"},
		{"status=open", `filter "status=open": no operator`},
		{"status=.open", "no operator"},
		{"status=", "no operator"},
		{"status=like.open", `unknown operator "like"`},
		{"status=EQ.open", `unknown operator "EQ"`},
		{"status=not.eq.open", `unknown operator "not"`},
		{"a=is.maybe", `is takes null, true or false, not "maybe"`},
		{"a=is.", `is takes null, true or false, not ""`},
		{"id=in.1,2", "in takes a parenthesized list"},
		{"id=in.(1,2", "in takes a parenthesized list"},
		{"id=in.", "in takes a parenthesized list"},
		{"id=in.()", "in needs at least one value"},
		{"id=in.(1,,2)", "empty item"},
		{"id=in.(1,)", "empty item"},
		{"id=in.(,1)", "empty item"},
		{`s=in.("abc)`, "unterminated quote"},
		{`s=in.("abc\")`, "unterminated quote"},
		{`s=in.("a"b)`, `unexpected "b" after a quoted item`},
		{"a=eq.%zz", "bad escape in value"},
		{"%zz=eq.1", "bad escape in column"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			_, err := ParseFilter(tt.in)
			if err == nil {
				t.Fatalf("ParseFilter(%q) = nil error, want %q", tt.in, tt.want)
			}
			if !errors.Is(err, ErrBadFilter) {
				t.Errorf("error %v does not wrap ErrBadFilter", err)
			}
			if errors.Is(err, ErrUnknownColumn) {
				t.Errorf("error %v wraps ErrUnknownColumn", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

func TestFilterFromQuery(t *testing.T) {
	reserved := []string{"events", "select", "since", "access_token"}
	tests := []struct {
		query string
		want  string // canonical filter
		err   string
	}{
		{query: "", want: ""},
		{query: "events=insert&select=id&since=t1-0&access_token=x", want: ""},
		{query: "status=eq.open&events=insert", want: "status=eq.open"},
		{query: "total=gt.10&total=lt.20&id=in.(1,2)", want: "id=in.(1,2)&total=gt.10&total=lt.20"},
		{query: "q=eq.a%26b", want: "q=eq.a%26b"},
		{query: "name=eq.a%2Cb", want: "name=eq.a,b"},
		{query: "status=open", err: `filter "status=open": no operator`},
		{query: "=eq.1", err: "empty column name"},
		{query: "a=is.maybe", err: "is takes null, true or false"},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			q, err := url.ParseQuery(tt.query)
			if err != nil {
				t.Fatal(err)
			}
			f, err := FilterFromQuery(q, reserved)
			if tt.err != "" {
				if err == nil || !errors.Is(err, ErrBadFilter) || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("FilterFromQuery(%q) error = %v, want one containing %q", tt.query, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("FilterFromQuery(%q): %v", tt.query, err)
			}
			if got := f.String(); got != tt.want {
				t.Errorf("filter = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestFilterAnd(t *testing.T) {
	f := mustFilter(t, "a=eq.1")
	g := mustFilter(t, "b=eq.2&c=is.null")
	if got := f.And(g).String(); got != "a=eq.1&b=eq.2&c=is.null" {
		t.Errorf("And = %q", got)
	}
	if got := f.And(Filter{}).String(); got != "a=eq.1" {
		t.Errorf("And(empty) = %q", got)
	}
	if got := (Filter{}).And(g).String(); got != "b=eq.2&c=is.null" {
		t.Errorf("empty.And = %q", got)
	}
	// And must not write into f's conditions when they have spare capacity.
	h := Filter{conds: make([]cond, 1, 4)}
	h.conds[0] = f.conds[0]
	x := h.And(g)
	y := h.And(f)
	if x.String() != "a=eq.1&b=eq.2&c=is.null" || y.String() != "a=eq.1&a=eq.1" {
		t.Errorf("And aliased: %q, %q", x, y)
	}
}

// testTable has a column of every kind the checks know.
var testTable = &Table{
	Name: "public.orders",
	Columns: []Column{
		{"id", "int8"}, {"small", "int2"}, {"n4", "int4"}, {"total", "numeric"}, {"ratio", "float8"},
		{"status", "text"}, {"code", "bpchar"}, {"label", "varchar"}, {"paid", "bool"},
		{"created_at", "timestamptz"}, {"day", "date"}, {"owner", "uuid"}, {"data", "jsonb"},
		{"tags", "_text"}, {"mood", "mood_enum"},
	},
	Key: []string{"id"},
}

func TestCheck(t *testing.T) {
	tests := []struct {
		filter  string
		err     string // "" = valid
		unknown bool
	}{
		{filter: ""},
		{filter: "id=eq.42&total=gt.9.5&ratio=lt.-1e-3&status=eq.open&paid=eq.true&paid=is.false"},
		{filter: "id=in.(1,2,3)&status=in.(a,\"b,c\")&deleted=is.null", err: "table public.orders has no column deleted", unknown: true},
		{filter: "nope=eq.1", err: `filter "nope=eq.1": table public.orders has no column nope`, unknown: true},
		{filter: "total=gt.abc", err: `filter "total=gt.abc": total is numeric, "abc" is not a number`},
		{filter: "total=eq.", err: `total is numeric, "" is not a number`},
		{filter: "id=eq.1.5", err: `id is int8, "1.5" is not an integer`},
		{filter: "id=eq.1.0"},
		{filter: "id=eq.4.2e1"},
		{filter: "id=in.(1,x)", err: `id is int8, "x" is not a number`},
		{filter: "small=eq.40000", err: `small is int2, "40000" is out of range (-32768 to 32767)`},
		{filter: "small=eq.-32768"},
		{filter: "n4=eq.2147483648", err: "out of range"},
		{filter: "id=eq.9223372036854775807"},
		{filter: "id=eq.9223372036854775808", err: "out of range"},
		{filter: "paid=eq.yes", err: `paid is bool, "yes" is not true or false`},
		{filter: "paid=eq.FALSE"},
		{filter: "status=is.true", err: "status is text; is.true and is.false need a bool column"},
		{filter: "status=is.null&paid=is.null&data=is.null&tags=is.null"},
		{filter: "data=eq.{\"a\":1}&data=neq.5&tags=eq.[\"a\",\"b\"]"},
		{filter: "data=gt.1", err: "data is jsonb; only eq, neq and is work on it"},
		{filter: "tags=in.([\"a\"])", err: "tags is _text; only eq, neq and is work on it"},
		{filter: "tags=eq.{a,b}", err: `tags is _text, "{a,b}" is not a JSON array`},
		{filter: "owner=eq.6f1c1c3e-8a4b-4b8e-9f3e-2a1b3c4d5e6f"},
		{filter: "owner=eq.6F1C1C3E-8A4B-4B8E-9F3E-2A1B3C4D5E6F", err: "is not a lower-case uuid"},
		{filter: "day=eq.2026-11-27"},
		{filter: "day=eq.27/11/2026", err: `day is date, "27/11/2026" is not a date`},
		{filter: "created_at=gte.2026-11-27T00:00:00Z"},
		{filter: "created_at=gte.yesterday", err: "is not a timestamp"},
		{filter: "mood=eq.happy&code=lt.x&label=eq.&status=eq.42"},
	}
	for _, tt := range tests {
		t.Run(tt.filter, func(t *testing.T) {
			f := mustFilter(t, tt.filter)
			err := f.Check(testTable)
			if tt.err == "" {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("Check error = %v, want one containing %q", err, tt.err)
			}
			if !errors.Is(err, ErrBadFilter) {
				t.Errorf("error does not wrap ErrBadFilter")
			}
			if errors.Is(err, ErrUnknownColumn) != tt.unknown {
				t.Errorf("errors.Is(err, ErrUnknownColumn) = %v, want %v", !tt.unknown, tt.unknown)
			}
		})
	}
}

func mustFilter(t testing.TB, s string) Filter {
	t.Helper()
	f, err := ParseFilter(s)
	if err != nil {
		t.Fatalf("ParseFilter(%q): %v", s, err)
	}
	return f
}
