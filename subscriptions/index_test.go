package subscriptions

import (
	"encoding/json"
	"fmt"
	"math/big"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func TestIndexNoDoubleDelivery(t *testing.T) {
	tests := []struct {
		filter   string
		new, old Row
	}{
		{"id=eq.1", Row{"id": json.Number("1")}, Row{"id": json.Number("1")}},
		{"id=in.(1,2)", Row{"id": json.Number("1")}, Row{"id": json.Number("2")}},
		{"id=in.(1,2)", Row{"id": json.Number("2")}, Row{"id": json.Number("1.0")}},
		// One sub filed under two keys ("42.0" as text, "42" as a number),
		// the new and old values hitting one each.
		{"v=eq.42.0", Row{"v": json.Number("42")}, Row{"v": "42.0"}},
		{"v=eq.42.0", Row{"v": "42.0"}, Row{"v": json.Number("42")}},
		{"v=eq.TRUE", Row{"v": true}, Row{"v": "TRUE"}},
		{`v=eq.{"a":1}`, Row{"v": map[string]any{"a": json.Number("1.0")}}, Row{"v": `{"a":1}`}},
		{"id=eq.1&status=eq.open", Row{"id": json.Number("1"), "status": "open"}, Row{"id": json.Number("1"), "status": "open"}},
	}
	for _, tt := range tests {
		ix := NewIndex()
		s := &Sub{Table: "t", Filter: mustFilter(t, tt.filter), Events: AllEvents}
		ix.Add(s)
		n := 0
		ix.Match(&Change{Table: "t", Op: "update", New: tt.new, Old: tt.old}, func(*Sub) { n++ })
		if n != 1 {
			t.Errorf("%s, new %v, old %v: delivered %d times", tt.filter, tt.new, tt.old, n)
		}
	}
}

func TestIndexAddRemove(t *testing.T) {
	ix := NewIndex()
	a := &Sub{Table: "t", Filter: mustFilter(t, "id=eq.1"), Events: AllEvents}
	b := &Sub{Table: "t", Filter: mustFilter(t, "id=eq.1"), Events: AllEvents}
	c := &Sub{Table: "t", Events: AllEvents}
	d := &Sub{Table: "u", Filter: mustFilter(t, "id=in.(1,2,3)"), Events: AllEvents}
	for _, s := range []*Sub{a, b, c, d} {
		ix.Add(s)
	}
	if ix.Len() != 4 {
		t.Fatalf("Len = %d", ix.Len())
	}
	got := func(table string) map[*Sub]int {
		m := make(map[*Sub]int)
		ix.Match(&Change{Table: table, Op: "insert", New: Row{"id": json.Number("1")}}, func(s *Sub) { m[s]++ })
		return m
	}
	if m := got("t"); len(m) != 3 || m[a] != 1 || m[b] != 1 || m[c] != 1 {
		t.Errorf("match = %v", m)
	}
	ix.Remove(a)
	ix.Remove(a) // twice: no-op
	if m := got("t"); len(m) != 2 || m[b] != 1 || m[c] != 1 {
		t.Errorf("after Remove(a): %v", m)
	}
	// Re-adding replaces: b now wants id 2.
	b.Filter = mustFilter(t, "id=eq.2")
	ix.Add(b)
	if m := got("t"); len(m) != 1 || m[c] != 1 {
		t.Errorf("after re-adding b: %v", m)
	}
	if ix.Len() != 3 {
		t.Errorf("Len = %d", ix.Len())
	}
	ix.Remove(d)
	if m := got("u"); len(m) != 0 {
		t.Errorf("after Remove(d): %v", m)
	}
	ix.Remove(b)
	ix.Remove(c)
	if ix.Len() != 0 || len(ix.tables) != 0 {
		t.Errorf("empty index holds %d subs, %d tables", ix.Len(), len(ix.tables))
	}
}

func TestIndexMatchAllocs(t *testing.T) {
	ix := NewIndex()
	for i := range 1000 {
		ix.Add(&Sub{Table: "public.orders", Filter: mustFilter(t, fmt.Sprintf("id=eq.%d", i)), Events: AllEvents})
		ix.Add(&Sub{Table: "public.orders", Filter: mustFilter(t, fmt.Sprintf("total=eq.%d.5", i)), Events: AllEvents})
	}
	ix.Add(&Sub{Table: "public.orders", Filter: mustFilter(t, "status=eq.open&total=gt.3"), Events: AllEvents})
	ix.Add(&Sub{Table: "public.orders", Filter: mustFilter(t, "status=in.(open,closed)&id=gt.5"), Events: AllEvents})
	c := &Change{
		Table: "public.orders", Op: "update",
		New: Row{"id": json.Number("500"), "status": "open", "total": json.Number("9.50")},
		Old: Row{"id": json.Number("500"), "status": "closed", "total": json.Number("1e1")},
	}
	n := 0
	fn := func(*Sub) { n++ }
	allocs := testing.AllocsPerRun(100, func() { ix.Match(c, fn) })
	if allocs != 0 {
		t.Errorf("Match allocates %v times", allocs)
	}
	if n != 101*4 { // id=eq.500, total=eq.9.5, and the two unfiled ones
		t.Errorf("delivered %d, want %d", n, 101*4)
	}
}

// TestIndexRandom compares Index.Match with a brute-force evaluation, by an
// independent reference implementation, of every subscription, over random
// filters, changes, additions and removals.
func TestIndexRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	ix := NewIndex()
	var live []*Sub
	delivered := 0
	steps := 3000
	if testing.Short() {
		steps = 500
	}
	for step := range steps {
		switch r := rng.IntN(10); {
		case r < 5 || len(live) == 0:
			s := &Sub{Table: randTable(rng), Filter: randFilter(t, rng), Events: Events(1 + rng.IntN(15))}
			ix.Add(s)
			live = append(live, s)
		case r < 7:
			i := rng.IntN(len(live))
			ix.Remove(live[i])
			live[i] = live[len(live)-1]
			live = live[:len(live)-1]
		case r < 8:
			s := live[rng.IntN(len(live))]
			s.Filter = randFilter(t, rng)
			s.Events = Events(1 + rng.IntN(15))
			ix.Add(s) // replaces
		default:
			ix.Remove(&Sub{}) // not in the index
		}
		if ix.Len() != len(live) {
			t.Fatalf("step %d: Len = %d, want %d", step, ix.Len(), len(live))
		}
		for range 5 {
			c := randChange(rng)
			got := make(map[*Sub]int)
			ix.Match(c, func(s *Sub) { got[s]++ })
			delivered += len(got)
			for _, s := range live {
				want := refMatches(t, s, c)
				if n := got[s]; n > 1 || (n == 1) != want {
					t.Fatalf("step %d: sub %q (events %v) on %s %s new %v old %v: delivered %d times, reference says %v",
						step, s.Filter, s.Events, c.Table, c.Op, c.New, c.Old, n, want)
				}
				if s.Matches(c) != want {
					t.Fatalf("step %d: Sub.Matches(%q) on %s %v %v = %v, reference says %v", step, s.Filter, c.Op, c.New, c.Old, !want, want)
				}
				delete(got, s)
			}
			if len(got) > 0 {
				t.Fatalf("step %d: delivered to subs not in the index: %v", step, got)
			}
		}
	}
	t.Logf("%d deliveries checked, %d subscriptions at the end", delivered, len(live))
}

func randTable(rng *rand.Rand) string { return []string{"a", "b"}[rng.IntN(2)] }

var (
	randCols   = []string{"id", "status", "total", "flag", "data", "note"}
	randOps    = []string{"eq", "eq", "eq", "neq", "lt", "lte", "gt", "gte", "in", "in", "is"}
	randValues = []string{"1", "2", "42", "42.0", "4.2e1", "042", "-0", "0", "0.1", "1e-1", "9007199254740993", "9007199254740992", "open", "closed", "true", "TRUE", "false", "", "null", "[1]", `{"a":1}`, `{"a": 1.0}`, `a,b`, `x"y`}
	// Most values come from small pools, so that filters and rows collide.
	hotValues   = []string{"1", "2", "42.0", "open", "true"}
	hotRowVals  = []any{json.Number("1"), json.Number("2"), json.Number("42"), "42.0", "open", true}
	randRowVals = []any{
		json.Number("1"), json.Number("2"), json.Number("42"), json.Number("42.0"), json.Number("4.2e1"),
		json.Number("0"), json.Number("-0"), json.Number("0.10"), json.Number("9007199254740993"), json.Number("9007199254740992"),
		"1", "42", "42.0", "042", "open", "closed", "", "true", "a,b", `x"y`,
		true, false, nil,
		[]any{json.Number("1")}, map[string]any{"a": json.Number("1")}, map[string]any{"a": json.Number("2")},
	}
)

func randFilter(t *testing.T, rng *rand.Rand) Filter {
	var parts []string
	for range rng.IntN(4) {
		col := randCols[rng.IntN(len(randCols))]
		op := randOps[rng.IntN(len(randOps))]
		var v string
		switch op {
		case "is":
			v = []string{"null", "true", "false"}[rng.IntN(3)]
		case "in":
			var items []string
			for range 1 + rng.IntN(4) {
				var b strings.Builder
				writeItem(&b, randValue(rng))
				items = append(items, b.String())
			}
			v = "(" + strings.Join(items, ",") + ")"
		default:
			v = randValue(rng)
		}
		parts = append(parts, col+"="+op+"."+escapeValue(v))
	}
	return mustFilter(t, strings.Join(parts, "&"))
}

func randValue(rng *rand.Rand) string {
	if rng.IntN(3) > 0 {
		return hotValues[rng.IntN(len(hotValues))]
	}
	return randValues[rng.IntN(len(randValues))]
}

func randRow(rng *rand.Rand) Row {
	if rng.IntN(8) == 0 {
		return nil
	}
	r := make(Row)
	for _, c := range randCols {
		if rng.IntN(6) > 0 {
			if rng.IntN(3) > 0 {
				r[c] = hotRowVals[rng.IntN(len(hotRowVals))]
			} else {
				r[c] = randRowVals[rng.IntN(len(randRowVals))]
			}
		}
	}
	return r
}

func randChange(rng *rand.Rand) *Change {
	c := &Change{Table: randTable(rng), Op: []string{"insert", "update", "update", "delete", "truncate", "bogus"}[rng.IntN(6)]}
	switch c.Op {
	case "insert":
		c.New = randRow(rng)
		if rng.IntN(4) == 0 {
			c.Old = randRow(rng) // must be ignored
		}
	case "update":
		c.New, c.Old = randRow(rng), randRow(rng)
		if rng.IntN(3) == 0 && c.New != nil && c.Old != nil {
			c.Old["id"] = c.New["id"] // same key: both lookups hit one bucket
		}
	case "delete":
		c.Old = randRow(rng)
	}
	return c
}

// The reference implementation: written from the contract, sharing no code
// with the package beyond Filter.Conditions.

func refMatches(t *testing.T, s *Sub, c *Change) bool {
	if s.Table != c.Table {
		return false
	}
	bit := map[string]Events{"insert": Insert, "update": Update, "delete": Delete, "truncate": Truncate}[c.Op]
	if s.Events&bit == 0 {
		return false
	}
	conds := s.Filter.Conditions()
	switch c.Op {
	case "insert":
		return refRow(t, conds, c.New)
	case "delete":
		return refRow(t, conds, c.Old)
	case "update":
		return refRow(t, conds, c.New) || refRow(t, conds, c.Old)
	}
	return true // truncate
}

func refRow(t *testing.T, conds []Condition, r Row) bool {
	if r == nil {
		return len(conds) == 0
	}
	for _, c := range conds {
		if !refCond(t, c, r) {
			return false
		}
	}
	return true
}

func refCond(t *testing.T, c Condition, r Row) bool {
	x, present := r[c.Column]
	if c.Op == "is" {
		switch c.Value {
		case "null":
			return !present || x == nil
		case "true":
			return x == true
		}
		return x == false
	}
	if x == nil {
		return false
	}
	cmp := func(v string) (int, bool) { return refCmp(t, x, v, c.Op) }
	switch c.Op {
	case "in":
		for _, v := range c.Values {
			if n, ok := cmp(v); ok && n == 0 {
				return true
			}
		}
		return false
	}
	n, ok := cmp(c.Value)
	if !ok {
		return false
	}
	switch c.Op {
	case "eq":
		return n == 0
	case "neq":
		return n != 0
	case "lt":
		return n < 0
	case "lte":
		return n <= 0
	case "gt":
		return n > 0
	case "gte":
		return n >= 0
	}
	t.Fatalf("unknown op %q", c.Op)
	return false
}

var refNumber = regexp.MustCompile(`^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$`)

func refCmp(t *testing.T, x any, v, op string) (int, bool) {
	switch x := x.(type) {
	case string:
		return strings.Compare(x, v), true
	case json.Number:
		if !refNumber.MatchString(v) {
			return 0, false
		}
		return rat(t, string(x)).Cmp(rat(t, v)), true
	case bool:
		if !strings.EqualFold(v, "true") && !strings.EqualFold(v, "false") {
			return 0, false
		}
		b := strings.EqualFold(v, "true")
		switch {
		case x == b:
			return 0, true
		case !x:
			return -1, true
		}
		return 1, true
	case []any, map[string]any:
		if op != "eq" && op != "neq" && op != "in" {
			return 0, false
		}
		var want any
		dec := json.NewDecoder(strings.NewReader(v))
		dec.UseNumber()
		if dec.Decode(&want) != nil || dec.More() {
			return 0, false
		}
		if _, ok := want.(map[string]any); !ok {
			if _, ok := want.([]any); !ok {
				return 0, false
			}
		}
		if refJSONEqual(x, want) {
			return 0, true
		}
		return 1, true
	}
	t.Fatalf("unexpected row value %#v", x)
	return 0, false
}

// refJSONEqual compares decoded JSON values, numbers by value.
func refJSONEqual(a, b any) bool {
	switch a := a.(type) {
	case json.Number:
		b, ok := b.(json.Number)
		if !ok {
			return false
		}
		ra, _ := new(big.Rat).SetString(string(a))
		rb, _ := new(big.Rat).SetString(string(b))
		return ra != nil && rb != nil && ra.Cmp(rb) == 0
	case []any:
		b, ok := b.([]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for i := range a {
			if !refJSONEqual(a[i], b[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		b, ok := b.(map[string]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for k, v := range a {
			w, ok := b[k]
			if !ok || !refJSONEqual(v, w) {
				return false
			}
		}
		return true
	}
	return a == b
}

func TestIndexConcurrent(t *testing.T) {
	// Run with -race: Add and Remove from several goroutines, Match from one.
	var ix Index // the zero Index works too
	filters := make([]Filter, 50)
	for i := range filters {
		filters[i] = mustFilter(t, fmt.Sprintf("id=eq.%d", i))
	}
	done := make(chan struct{})
	for g := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 500 {
				s := &Sub{Table: "t", Filter: filters[(g*1000+i)%50], Events: AllEvents}
				ix.Add(s)
				if i%2 == 0 {
					ix.Remove(s)
				}
			}
		}()
	}
	n := 0
	for range 2000 {
		ix.Match(&Change{Table: "t", Op: "insert", New: Row{"id": json.Number("7")}}, func(*Sub) { n++ })
	}
	for range 4 {
		<-done
	}
	if ix.Len() != 4*250 {
		t.Errorf("Len = %d, want %d", ix.Len(), 4*250)
	}
}

// BenchmarkMatchRowScoped matches updates of random rows against 1,000,000
// row-scoped subscriptions (id=eq.N), one per row.
func BenchmarkMatchRowScoped(b *testing.B) {
	const n = 1_000_000
	ix := NewIndex()
	for i := range n {
		f, err := ParseFilter("id=eq." + strconv.Itoa(i))
		if err != nil {
			b.Fatal(err)
		}
		ix.Add(&Sub{Table: "public.orders", Filter: f, Events: AllEvents})
	}
	// Changes of rows spread over the table, so that lookups miss the cache
	// as they would in production.
	rng := rand.New(rand.NewPCG(3, 4))
	changes := make([]*Change, 4096)
	for i := range changes {
		id := json.Number(strconv.Itoa(rng.IntN(n)))
		changes[i] = &Change{
			Table: "public.orders", Op: "update",
			New: Row{"id": id, "status": "open", "total": json.Number("9.5"), "user_id": "u1"},
			Old: Row{"id": id, "status": "closed", "total": json.Number("9.5"), "user_id": "u1"},
		}
	}
	matched := 0
	fn := func(*Sub) { matched++ }
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		ix.Match(changes[i%len(changes)], fn)
		i++
	}
	if matched != i {
		b.Fatalf("matched %d, want %d", matched, i)
	}
}

func BenchmarkMatchTableWide(b *testing.B) {
	const n = 1000
	ix := NewIndex()
	for range n {
		ix.Add(&Sub{Table: "public.orders", Events: AllEvents})
	}
	c := &Change{
		Table: "public.orders", Op: "update",
		New: Row{"id": json.Number("1"), "status": "open"},
		Old: Row{"id": json.Number("1"), "status": "closed"},
	}
	matched := 0
	fn := func(*Sub) { matched++ }
	b.ReportAllocs()
	for b.Loop() {
		ix.Match(c, fn)
	}
	if matched != n*b.N {
		b.Fatalf("matched %d, want %d", matched, n*b.N)
	}
}

// BenchmarkMatchFilteredScan measures subscriptions without eq or in, which
// every change of their table evaluates.
func BenchmarkMatchFilteredScan(b *testing.B) {
	const n = 1000
	ix := NewIndex()
	for i := range n {
		ix.Add(&Sub{Table: "public.orders", Filter: mustFilter(b, fmt.Sprintf("total=gt.%d.25&status=neq.x", i)), Events: AllEvents})
	}
	c := &Change{
		Table: "public.orders", Op: "update",
		New: Row{"id": json.Number("1"), "status": "open", "total": json.Number("500.5")},
		Old: Row{"id": json.Number("1"), "status": "closed", "total": json.Number("499")},
	}
	fn := func(*Sub) {}
	b.ReportAllocs()
	for b.Loop() {
		ix.Match(c, fn)
	}
}
