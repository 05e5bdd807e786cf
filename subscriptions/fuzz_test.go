package subscriptions

import (
	"encoding/json"
	"net/url"
	"reflect"
	"testing"
)

// fuzzRow has a value of every kind, to run parsed filters on.
var fuzzRow = Row{
	"id": json.Number("42"), "total": json.Number("9.50"), "status": "open", "paid": true, "note": nil,
	"data": map[string]any{"a": []any{json.Number("1"), "x"}}, "tags": []any{"a"},
}

// checkFilter checks what must hold of any filter that parsed.
func checkFilter(t *testing.T, f Filter) {
	s := f.String()
	g, err := ParseFilter(s)
	if err != nil {
		t.Fatalf("String() = %q does not parse: %v", s, err)
	}
	if !reflect.DeepEqual(g.Conditions(), f.Conditions()) {
		t.Fatalf("String() = %q parses to %#v, want %#v", s, g.Conditions(), f.Conditions())
	}
	if g.String() != s {
		t.Fatalf("String() is not stable: %q, then %q", s, g.String())
	}
	// Nothing else may panic either.
	_ = f.Check(testTable)
	_ = f.Match(fuzzRow)
	ix := NewIndex()
	sub := &Sub{Table: "t", Filter: f, Events: AllEvents}
	ix.Add(sub)
	n := 0
	ix.Match(&Change{Table: "t", Op: "update", New: fuzzRow, Old: Row{"id": json.Number("4.2e1"), "status": "42"}}, func(*Sub) { n++ })
	if n > 1 {
		t.Fatalf("delivered %d times", n)
	}
	ix.Remove(sub)
}

func FuzzParseFilter(f *testing.F) {
	for _, s := range []string{
		"",
		"status=eq.open&total=gt.10&id=in.(1,2,3)&deleted_at=is.null",
		`s=in.("a,b","say \"hi\"",c)`,
		"q=eq.a%26b%3Dc&r%3Dx=eq.1.5",
		"total=gte.-4.2e1&paid=is.TRUE",
		`data=eq.{"a":[1,"x"]}`,
		"id=in.()",
		"a=is.maybe",
		`s=in.("abc`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		flt, err := ParseFilter(s)
		if err != nil {
			return
		}
		checkFilter(t, flt)
	})
}

func FuzzFilterFromQuery(f *testing.F) {
	for _, s := range []string{
		"status=eq.open&events=insert&select=id",
		"total=gt.10&total=lt.20&since=t1-0",
		"id=in.(1,%222%22)&access_token=x",
		"q=eq.a%26b",
		"status",
	} {
		f.Add(s)
	}
	reserved := []string{"events", "select", "since", "access_token"}
	f.Fuzz(func(t *testing.T, query string) {
		q, err := url.ParseQuery(query)
		if err != nil {
			return
		}
		flt, err := FilterFromQuery(q, reserved)
		if err != nil {
			return
		}
		n := 0
		for name, vs := range q {
			if !contains(reserved, name) {
				n += len(vs)
			}
		}
		if len(flt.conds) != n {
			t.Fatalf("%d conditions from %d parameters", len(flt.conds), n)
		}
		checkFilter(t, flt)
	})
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
