package listener_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgfeed/pgfeed/listener"
	"github.com/pgfeed/pgfeed/triggers"
)

// TestLogRowsRenderAsToJSONB captures a bulk insert (a chunk), a row-level
// update and a bulk delete of rows holding many types, and checks that every
// value the listener reads back is byte for byte what to_jsonb gives for it:
// capture stores to_json text, which writes floats differently.
func TestLogRowsRenderAsToJSONB(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, migratedDB(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE TYPE pair AS (zz int, y text)`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE "we""ird" (
		"k 1" int, k2 text, f8 float8, f4 real, num numeric, big bigint, b boolean, t text,
		ts timestamptz, tsn timestamp, d date, j json, jb jsonb, u uuid, arr float8[], tarr text[],
		by bytea, iv interval, p pair, pa pair[], ja json[], PRIMARY KEY ("k 1", k2))`); err != nil {
		t.Fatal(err)
	}
	if _, err := triggers.Enable(ctx, conn, `"we""ird"`); err != nil {
		t.Fatal(err)
	}
	first, _, err := listener.CreateTick(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	const rows = `INSERT INTO "we""ird" VALUES
		(1, 'a', 1e20, 1.5e-7, 1.50, 9007199254740993, true, 'x "y" \ z', '2026-11-27 14:05:41.123456+03', '2026-11-27 14:05:41', '2026-11-27',
		 '{"b": 1e3, "a": [1, 2], "b": "\u00e9\n"}', '{"b": 1, "a": [1.0, -0]}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{1e100,-0,NaN,Infinity}', '{"a,b",NULL}', '\x00ff', '1 day 02:03:04',
		 '(1,"a\"b")', ARRAY['(2,x)'::pair], ARRAY['{"k": 1, "b": "\u00e9", "k": 2}'::json]),
		(2, 'b', '-0', '-Infinity', -0.000, -1, false, '', NULL, NULL, NULL, 'null', '"s"', NULL, '{}', '{}', '', '-1 mon', NULL, NULL, NULL),
		(3, 'c', 123456789012345678, 3.4028235e38, 1e-5, 0, NULL, repeat('x', 5000), 'infinity', '-infinity', 'infinity', '[]', '[]', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)`
	if _, err := conn.Exec(ctx, rows); err != nil {
		t.Fatal(err)
	}
	want := map[string][]byte{} // "op/k 1" -> to_jsonb of the row
	snapshot := func(op string) {
		rs, err := conn.Query(ctx, `SELECT "k 1", to_jsonb(r)::text FROM "we""ird" r`)
		if err != nil {
			t.Fatal(err)
		}
		defer rs.Close()
		for rs.Next() {
			var k int
			var j []byte
			if err := rs.Scan(&k, &j); err != nil {
				t.Fatal(err)
			}
			want[fmt.Sprintf("%s/%d", op, k)] = j
		}
		if err := rs.Err(); err != nil {
			t.Fatal(err)
		}
	}
	snapshot("insert")
	if _, err := conn.Exec(ctx, `UPDATE "we""ird" SET f8 = -f8, t = t || '!' WHERE "k 1" < 3`); err != nil {
		t.Fatal(err)
	}
	snapshot("update")
	if _, err := conn.Exec(ctx, `DELETE FROM "we""ird"`); err != nil {
		t.Fatal(err)
	}
	second, _, err := listener.CreateTick(ctx, conn)
	if err != nil || second.ID != first.ID+1 {
		t.Fatalf("tick %v, %v", second, err)
	}
	b, err := listener.ReadBatch(ctx, conn, second.ID)
	if err != nil {
		t.Fatal(err)
	}
	var ops []string
	for _, c := range b.Changes {
		ops = append(ops, c.Op)
		row := c.New
		if c.Op == "delete" {
			row = c.Old
		}
		var k struct {
			K1 int    `json:"k 1"`
			K2 string `json:"k2"`
		}
		if err := json.Unmarshal(c.Key, &k); err != nil {
			t.Fatalf("%s key %s: %v", c.Op, c.Key, err)
		}
		wantKey := fmt.Sprintf(`{"k 1":%d,"k2":%q}`, k.K1, k.K2)
		if string(c.Key) != wantKey {
			t.Errorf("%s key = %s, want %s", c.Op, c.Key, wantKey)
		}
		op := c.Op
		if op == "delete" {
			op = "update" // a delete's old row is the row after the update
		}
		if op == "update" && k.K1 == 3 {
			op = "insert" // row 3 was not updated
		}
		sameValues(t, c.Op+" "+string(c.Key), row, want[fmt.Sprintf("%s/%d", op, k.K1)])
		if c.Op == "update" {
			sameValues(t, "update old "+string(c.Key), c.Old, want[fmt.Sprintf("insert/%d", k.K1)])
		}
	}
	if got := strings.Join(ops, ","); got != "insert,insert,insert,update,update,delete,delete,delete" {
		t.Errorf("ops = %s", got)
	}
}

// sameValues checks that got (from the listener) has the members of want
// (to_jsonb text), each value byte for byte once compacted.
func sameValues(t *testing.T, what string, got, want []byte) {
	t.Helper()
	var g, w map[string]json.RawMessage
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%s: %s: %v", what, got, err)
	}
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatalf("%s: want %s: %v", what, want, err)
	}
	if len(g) != len(w) {
		t.Errorf("%s: %d columns, want %d", what, len(g), len(w))
	}
	for name, wv := range w {
		var cw bytes.Buffer
		if err := json.Compact(&cw, wv); err != nil {
			t.Fatal(err)
		}
		if gv := string(g[name]); gv != cw.String() {
			t.Errorf("%s: %s = %s, want %s", what, name, gv, cw.String())
		}
	}
}

func TestExpandLogRow(t *testing.T) {
	base := listener.Change{Schema: "s", Table: "t", Op: "insert"}
	got, err := listener.ExpandLogRow(nil, base, []string{"id"}, []byte(`[{"id": 1, "v": 1e+3}, 
 {"id": 2, "v": "a,]}\"{"}]`), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || string(got[0].New) != `{"id":1,"v":1000}` || string(got[0].Key) != `{"id":1}` ||
		string(got[1].New) != `{"id":2,"v":"a,]}\"{"}` || string(got[1].Key) != `{"id":2}` || got[1].Old != nil {
		t.Errorf("chunk: %+v", got)
	}
	base.Op = "update"
	got, err = listener.ExpandLogRow(nil, base, []string{"a", "missing"}, []byte(`{"a":[1],"b":-0.0}`), []byte(`{"a":[2]}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || string(got[0].Key) != `{"a":[1],"missing":null}` || string(got[0].New) != `{"a":[1],"b":0.0}` || string(got[0].Old) != `{"a":[2]}` {
		t.Errorf("row: %+v", got)
	}
	for _, bad := range []string{`[{"id":1}`, `{"id":}`, `[1,2]x`, `{"a":"b`} {
		if _, err := listener.ExpandLogRow(nil, base, []string{"id"}, []byte(bad), nil); err == nil {
			t.Errorf("ExpandLogRow(%s) accepted", bad)
		}
	}
}

func TestCanonicalJSON(t *testing.T) {
	for in, want := range map[string]string{
		`{"f":1e+20}`: `{"f":100000000000000000000}`,
		`[{"a":1.5e-07,"b":-0}, {"a":-0.0,"b":-1.5}]`: `[{"a":0.00000015,"b":0},{"a":0.0,"b":-1.5}]`,
		`{"a e": "1e5 -0", "b": -0e3}`:                `{"a e":"1e5 -0","b":0}`,
		`{"f":1.2345678901234568e+17}`:                `{"f":123456789012345680}`,
		// A json column: keys in jsonb's order, the last duplicate,
		// strings escaped as escape_json does, numbers as numeric.
		`{"z":1,"j":{"bb": 1, "a": [1e2, {"y":1,"x":2}], "a": "\u00e9\/\""}}`: `{"z":1,"j":{"a":"é/\"","bb":1}}`,
		// A composite column, written by to_json in its column order.
		`{"p":{"zz":1,"y":null}}`:           `{"p":{"y":null,"zz":1}}`,
		"\n {\"x\" : [ true , null , {} ]}": `{"x":[true,null,{}]}`,
		`{"s":"tab\tq\"\\"}`:                `{"s":"tab\tq\"\\"}`,
	} {
		got, err := listener.CanonicalJSON(nil, []byte(in))
		if err != nil || string(got) != want {
			t.Errorf("CanonicalJSON(%s) = %s, %v; want %s", in, got, err, want)
		}
	}
}

// FuzzExpandLogRow: whatever the log holds, expanding it never panics, and
// every row it yields is valid JSON with a valid key.
func FuzzExpandLogRow(f *testing.F) {
	for _, s := range []string{`[{"id":1,"v":1e3}]`, `{"id":-0,"b":[1,{"c":"}"}]}`, `[]`, `null`, `{"id":"\\\""}`, `[{"id":1},{"id":2}]`} {
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, raw []byte, isNew bool) {
		var n, o []byte
		if isNew {
			n = raw
		} else {
			o = raw
		}
		cs, err := listener.ExpandLogRow(nil, listener.Change{Op: "insert"}, []string{"id"}, n, o)
		if err != nil {
			return
		}
		for _, c := range cs {
			for _, v := range [][]byte{c.New, c.Old, c.Key} {
				if v != nil && !json.Valid(v) {
					t.Fatalf("invalid JSON %q from %q", v, raw)
				}
			}
		}
	})
}
