package subscriptions

import (
	"encoding/json"
	"math/big"
	"strings"
	"testing"
)

func row(t testing.TB, js string) Row {
	t.Helper()
	r, err := DecodeRow([]byte(js))
	if err != nil {
		t.Fatalf("DecodeRow(%s): %v", js, err)
	}
	return r
}

func TestFilterMatch(t *testing.T) {
	r := `{"id":42,"big":9007199254740993,"dec":0.1,"total":9.50,"neg":-3,"status":"open","paid":true,"gone":false,
		"note":null,"data":{"b":[1,2.0],"a":"x"},"tags":["a","b"],"js":"x","day":"2026-11-27","e":4.2E1}`
	tests := []struct {
		filter string
		want   bool
	}{
		{"", true},
		// eq/neq on numbers, exactly.
		{"id=eq.42", true},
		{"id=eq.42.0", true},
		{"id=eq.4.2e1", true},
		{"id=eq.%2B42", true},
		{"id=eq.+42", false}, // "+" is a space in a query string
		{"id=eq.43", false},
		{"id=neq.43", true},
		{"id=neq.42", false},
		{"big=eq.9007199254740993", true},
		{"big=eq.9007199254740992", false},
		{"big=gt.9007199254740992", true},
		{"big=lt.9007199254740994", true},
		{"dec=eq.0.1", true},
		{"dec=eq.0.10000000000000001", false},
		{"dec=gt.0.09999999999999999999", true},
		{"dec=lt..1000000000000000000001", true},
		{"total=eq.9.5", true},
		{"total=gte.9.5", true},
		{"total=gt.9.5", false},
		{"total=lte.9.50", true},
		{"total=lt.10", true},
		{"neg=lt.0", true},
		{"neg=gt.-3.5", true},
		{"neg=lt.-3", false},
		{"e=eq.42", true},
		// text, byte order.
		{"status=eq.open", true},
		{"status=eq.Open", false},
		{"status=neq.closed", true},
		{"status=gt.o", true},
		{"status=gt.opeN", true},
		{"status=lt.opens", true},
		{"status=lte.open", true},
		{"day=lt.2026-12-01", true},
		{"day=gt.2026-11-27", false},
		// a value of another kind never matches, whatever the op.
		{"id=eq.open", false},
		{"id=neq.open", false},
		{"id=lt.open", false},
		{"status=eq.1", false},
		{"paid=eq.1", false},
		{"paid=neq.1", false},
		// booleans.
		{"paid=eq.true", true},
		{"paid=eq.TRUE", true},
		{"paid=neq.false", true},
		{"gone=lt.true", true},
		{"paid=is.true", true},
		{"paid=is.false", false},
		{"gone=is.false", true},
		{"status=is.true", false},
		// null and missing.
		{"note=is.null", true},
		{"missing=is.null", true},
		{"id=is.null", false},
		{"note=eq.x", false},
		{"note=neq.x", false},
		{"missing=neq.x", false},
		{"note=in.(x,null)", false},
		{"note=lt.z", false},
		// in.
		{"id=in.(1,42,3)", true},
		{"id=in.(1,42.00)", true},
		{"id=in.(1,2)", false},
		{"status=in.(\"open\",closed)", true},
		{"status=in.(\"op,en\")", false},
		// JSON objects and arrays compare by canonical text.
		{`data=eq.{"a":"x","b":[1,2]}`, true},
		{`data=eq.{"a":"x","b":[1,2.5]}`, false},
		{`data=neq.{"a":"x"}`, true},
		{`data=lt.{"a":"x","b":[1,2]}`, false},
		{`tags=eq.["a","b"]`, true},
		{`tags=eq.["b","a"]`, false},
		{`tags=neq.["b","a"]`, true},
		{"data=eq.x", false},
		{"js=eq.x", true},
		// all conditions must hold.
		{"id=eq.42&status=eq.open", true},
		{"id=eq.42&status=eq.closed", false},
	}
	x := row(t, r)
	for _, tt := range tests {
		t.Run(tt.filter, func(t *testing.T) {
			f := mustFilter(t, tt.filter)
			if got := f.Match(x); got != tt.want {
				t.Errorf("Match = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestFilterMatchGoValues(t *testing.T) {
	// Rows built by hand may hold Go numbers rather than json.Number.
	x := Row{"i": 42, "f": 9.5, "u": uint8(7), "i64": int64(-1), "f32": float32(0.5)}
	for _, s := range []string{"i=eq.42", "f=eq.9.50", "u=in.(7)", "i64=lt.0", "f32=eq.0.5"} {
		if !mustFilter(t, s).Match(x) {
			t.Errorf("%s does not match %v", s, x)
		}
	}
}

func TestMatchRules(t *testing.T) {
	open := `{"id":1,"status":"open"}`
	closed := `{"id":1,"status":"closed"}`
	tests := []struct {
		name     string
		filter   string
		events   []string
		op       string
		new, old string
		want     bool
	}{
		{"insert matching new", "status=eq.open", nil, "insert", open, "", true},
		{"insert not matching", "status=eq.open", nil, "insert", closed, "", false},
		{"insert ignores old", "status=eq.open", nil, "insert", closed, open, false},
		{"delete matching old", "status=eq.open", nil, "delete", "", open, true},
		{"delete not matching", "status=eq.open", nil, "delete", "", closed, false},
		{"delete ignores new", "status=eq.open", nil, "delete", open, closed, false},
		{"update entering", "status=eq.open", nil, "update", open, closed, true},
		{"update leaving", "status=eq.open", nil, "update", closed, open, true},
		{"update staying in", "status=eq.open", nil, "update", open, open, true},
		{"update outside", "status=eq.open", nil, "update", closed, closed, false},
		{"update without old", "status=eq.open", nil, "update", open, "", true},
		{"update, old missing, is.null", "status=is.null", nil, "update", open, "", false},
		{"delete, key-only old, is.null", "status=is.null", nil, "delete", "", `{"id":1}`, true},
		{"truncate ignores filter", "status=eq.open", nil, "truncate", "", "", true},
		{"truncate, events without it", "", []string{"insert", "update", "delete"}, "truncate", "", "", false},
		{"truncate, events with it", "", []string{"truncate"}, "truncate", "", "", true},
		{"events exclude insert", "", []string{"update", "delete"}, "insert", open, "", false},
		{"events include update", "status=eq.open", []string{"update"}, "update", closed, open, true},
		{"events exclude delete", "status=eq.open", []string{"update"}, "delete", "", open, false},
		{"unknown op", "", nil, "upsert", open, "", false},
		{"empty filter, nil row", "", nil, "insert", "", "", true},
		{"filter, nil row", "id=eq.1", nil, "insert", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := ParseEvents(tt.events)
			if err != nil {
				t.Fatal(err)
			}
			s := &Sub{Table: "public.orders", Filter: mustFilter(t, tt.filter), Events: ev}
			c := &Change{Table: "public.orders", Op: tt.op}
			if tt.new != "" {
				c.New = row(t, tt.new)
			}
			if tt.old != "" {
				c.Old = row(t, tt.old)
			}
			if got := s.Matches(c); got != tt.want {
				t.Errorf("Sub.Matches = %v, want %v", got, tt.want)
			}
			ix := NewIndex()
			ix.Add(s)
			ix.Add(&Sub{Table: "public.other", Events: AllEvents})
			n := 0
			ix.Match(c, func(got *Sub) {
				if got != s {
					t.Errorf("Match delivered %+v", got)
				}
				n++
			})
			if want := map[bool]int{true: 1, false: 0}[tt.want]; n != want {
				t.Errorf("Index.Match delivered %d times, want %d", n, want)
			}
			c.Table = "public.elsewhere"
			if s.Matches(c) {
				t.Errorf("Sub.Matches a change of another table")
			}
		})
	}
}

func TestDecimal(t *testing.T) {
	nums := []string{
		"0", "-0", "0.0", "+0", "00", ".0", "0.", "0e5",
		"1", "1.0", "01", "1e0", "10e-1", ".1e1", "+1",
		"42", "42.0", "4.2e1", "420e-1", "0.42E2",
		"-42", "-4.2e1",
		"0.1", ".1", "1e-1", "0.10", "0.09999999999999999", "0.1000000000000000000001",
		"9007199254740992", "9007199254740993", "9.007199254740993e15",
		"123456789012345678901234567890", "1234567890123456789012345678901", "1e30", "1e31", "1e-9", "1e-10", "1e-11",
		"-1e400", "1e400", "1.5e-400", "12.5", "1250e-2", "-0.0001", "3.14159",
	}
	for _, a := range nums {
		da, ok := parseDecimal(a)
		if !ok {
			t.Fatalf("parseDecimal(%q) failed", a)
		}
		ra := rat(t, a)
		ka := string(da.appendCanonical(nil))
		if kd, ok := parseDecimal(ka); !ok || cmpDecimal(kd, da) != 0 {
			t.Errorf("canonical %q of %q does not parse back equal", ka, a)
		}
		if isPlainInt(a) && ka != a {
			t.Errorf("plain integer %q has canonical form %q", a, ka)
		}
		for _, b := range nums {
			db, _ := parseDecimal(b)
			want := ra.Cmp(rat(t, b))
			if got := cmpDecimal(da, db); got != want {
				t.Errorf("cmp(%s, %s) = %d, want %d", a, b, got, want)
			}
			kb := string(db.appendCanonical(nil))
			if (ka == kb) != (want == 0) {
				t.Errorf("canonical %q (%s) vs %q (%s), cmp %d", ka, a, kb, b, want)
			}
		}
	}
	for _, bad := range []string{"", "-", "+", ".", "e1", "1e", "1e+", "1.2.3", "1 ", " 1", "0x10", "NaN", "Infinity", "1_000", "1e1000001", "--1"} {
		if _, ok := parseDecimal(bad); ok {
			t.Errorf("parseDecimal(%q) succeeded", bad)
		}
	}
}

func rat(t testing.TB, s string) *big.Rat {
	t.Helper()
	r, ok := new(big.Rat).SetString(s)
	if !ok {
		t.Fatalf("big.Rat cannot parse %q", s)
	}
	return r
}

// FuzzDecimal checks the decimal comparison and canonical form against
// math/big.
func FuzzDecimal(f *testing.F) {
	for _, s := range [][2]string{{"1", "1.0"}, {"0.1", "1e-1"}, {"9007199254740993", "9007199254740992"}, {"-0", "0"}, {"12e3", "-1.2"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		da, oka := parseDecimal(a)
		db, okb := parseDecimal(b)
		if !oka || !okb || len(a) > 200 || len(b) > 200 || da.exp > 1000 || da.exp < -1000 || db.exp > 1000 || db.exp < -1000 {
			return
		}
		ra, ok1 := new(big.Rat).SetString(a)
		rb, ok2 := new(big.Rat).SetString(b)
		if !ok1 || !ok2 {
			t.Fatalf("big.Rat rejects %q or %q, which parseDecimal accepts", a, b)
		}
		want := ra.Cmp(rb)
		if got := cmpDecimal(da, db); got != want {
			t.Fatalf("cmp(%q, %q) = %d, want %d", a, b, got, want)
		}
		ka, kb := string(da.appendCanonical(nil)), string(db.appendCanonical(nil))
		if (ka == kb) != (want == 0) {
			t.Fatalf("canonical %q (%q), %q (%q): cmp %d", ka, a, kb, b, want)
		}
		x := Row{"v": json.Number(a)}
		if !mustFilter(t, "v=eq."+escapeValue(b)).Match(x) != (want != 0) {
			t.Fatalf("v=eq.%s on %s: wrong", b, a)
		}
	})
}

// escapeValue escapes s as a filter value.
func escapeValue(s string) string {
	var b strings.Builder
	writeEscaped(&b, s, false)
	return b.String()
}
