package listener_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"github.com/pgfeed/pgfeed/internal/pgtest"
	"github.com/pgfeed/pgfeed/listener"
)

// TestValueJSONMatchesToJSONB renders values of many types from their text
// output (as logical decoding sends them, DateStyle ISO, TimeZone UTC) and
// compares with what to_jsonb gives for the same values.
func TestValueJSONMatchesToJSONB(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn := pgtest.Connect(t, pgtest.NewDB(t))
	if _, err := conn.Exec(ctx, `SET DateStyle = ISO; SET TimeZone = 'UTC'; SET extra_float_digits = 3;
		CREATE DOMAIN posint AS int CHECK (VALUE > 0);
		CREATE TYPE mood AS ENUM ('sad', 'happy');
		CREATE TYPE pair AS (a int, b text)`); err != nil {
		t.Fatal(err)
	}
	values := []string{
		`true`, `false`,
		`0::int2`, `'-32768'::int2`, `2147483647::int4`, `9007199254740993::int8`, `-1::int8`,
		`12345678901234567890.123456789::numeric`, `0.1::numeric`, `'NaN'::numeric`, `1e-20::numeric`,
		`1.5::float4`, `0.1::float8`, `1e100::float8`, `'Infinity'::float8`, `'-Infinity'::float4`, `'NaN'::float8`,
		`'héllo "q" \ '::text`, `''::text`, `'abc'::varchar(5)`, `'ab'::char(4)`, `'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid`,
		`'2026-11-27'::date`, `'infinity'::date`,
		`'2026-11-27 14:05:41.123456'::timestamp`, `'2026-11-27 14:05:41'::timestamp`, `'-infinity'::timestamp`,
		`'2026-11-27 14:05:41.5+00'::timestamptz`, `'2026-11-27 14:05:41+05:30'::timestamptz`, `'infinity'::timestamptz`,
		`'14:05:41.5'::time`, `'1 day 2 hours'::interval`, `'\xdeadbeef'::bytea`, `'192.168.0.1/24'::inet`,
		`'{"b":[1,{"c":null}],"a":"x"}'::jsonb`, `'{"a": [1, 2], "b": "x"}'::json`, `'[]'::jsonb`, `'null'::jsonb`,
		`'{1,2,NULL}'::int[]`, `'{}'::int[]`, `'{{1,2},{3,4}}'::int[]`, `'[0:1]={7,8}'::int[]`,
		`'{"a,b","c\"d",NULL,"NULL",""}'::text[]`, `ARRAY['2026-11-27 14:05:41+00'::timestamptz]`,
		`ARRAY['{"a":1}'::jsonb]`, `ARRAY[true,false]`, `ARRAY[1.5,NULL]::numeric[]`,
		`5::posint`, `'happy'::mood`, `ROW(1, 'x y')::pair`, `ROW(NULL, '')::pair`, `ROW(2, 'q"uote,')::pair`,
		`'(1,2)'::point`, `12.5::money`,
		`'14:05:41.5+05:30'::timetz`, `'14:05:41+00'::timetz`, `'[1,5)'::int4range`, `'[2026-01-01,2026-02-01)'::daterange`,
		`'["2026-01-01 10:00:00+00","2026-01-02 10:00:00+00")'::tstzrange`, `'<a>x</a>'::xml`, `B'101'::bit(3)`, `B'10'::varbit`,
		`'08:00:2b:01:02:03'::macaddr`, `'10.0.0.0/8'::cidr`, `42::oid`, `'nm'::name`, `'x'::"char"`, `'a b'::tsvector`,
		`'1 year 2 mons -3 days 04:05:06.789'::interval`, `'-1.5e-7'::float8`, `'1e21'::float8`, `123456789.125::float4`,
		`'{{"2026-01-01"}}'::date[]`, `'{"(1,x)"}'::text[]`, `ARRAY[ARRAY[1.5,2]]::float8[]`,
		`'2026-11-27 14:05:41.123+00'::timestamptz(2)`, `'0001-01-01 00:00:00+00'::timestamptz`, `'12:00'::time(0)`,
		`'{"a": {"b": [1, 2]}, "c": "é\u0001"}'::jsonb`, `E'tab\there\u0007'::text`, `-0.0::float8`, `1e-320::float8`,
		`'{"b": 1, "a": [1.50, 1e2, -0, -0.0e5, 2.5E-3, "\u00e9\n<"], "b": {"zz": true, "z": null}, "": 0}'::json`,
		`'[]'::json`, `'"x"'::json`, `'12.0'::json`, `'[0e-2, -0.00, 0E+1, 1.0e-3, 1.50e1, 123456789012345678901234567890]'::json`, `ARRAY['{"b":1,"a":2}'::json]`,
		`'0044-03-15 BC'::date`, `'0044-03-15 12:00 BC'::timestamp`, `'0044-03-15 12:00+00 BC'::timestamptz`, `ARRAY['0001-01-01 00:00:01.5+00 BC'::timestamptz]`,
	}
	var types listener.Types
	for _, v := range values {
		var text []byte
		var want json.RawMessage
		var oid uint32
		if err := conn.QueryRow(ctx, `SELECT format('%s', `+v+`), to_jsonb(`+v+`), pg_typeof(`+v+`)::oid`).Scan(&text, &want, &oid); err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		typ, err := types.Type(ctx, conn, oid)
		if err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		got, err := listener.ValueJSON(nil, text, typ)
		if err != nil {
			t.Errorf("%s (text %q): %v", v, text, err)
			continue
		}
		if !sameJSON(got, want) {
			t.Errorf("%s (text %q):\n got  %s\n want %s", v, text, got, want)
		}
	}
}

// sameJSON compares JSON values with numbers as written.
func sameJSON(a, b []byte) bool {
	var x, y any
	da := json.NewDecoder(bytes.NewReader(a))
	da.UseNumber()
	db := json.NewDecoder(bytes.NewReader(b))
	db.UseNumber()
	if da.Decode(&x) != nil || db.Decode(&y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

// FuzzValueJSON: any text, for every kind of type, gives valid JSON or an
// ErrBadValue; never a panic.
func FuzzValueJSON(f *testing.F) {
	for _, s := range []string{"{1,2}", `{"a\"b",NULL}`, "(1,)", "t", "1e5", "2026-11-27 14:05:41+00", "{{1},{2}}", "[1:2]={1,2}", "{", `("x`} {
		f.Add(s)
	}
	num := &listener.Type{Kind: 'n'}
	tz := &listener.Type{Kind: 'z'}
	text := &listener.Type{Kind: 't'}
	types := []*listener.Type{
		{Kind: 'b'}, num, {Kind: 'f'}, {Kind: 'd'}, {Kind: 's'}, tz, {Kind: 'j'}, text,
		{Kind: 'a', Elem: num, Delim: ','}, {Kind: 'a', Elem: tz, Delim: ','}, {Kind: 'J'},
		{Kind: 'c', Fields: []listener.Field{{Name: "a", Type: num}, {Name: "b", Type: text}}},
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, typ := range types {
			out, err := listener.ValueJSON(nil, []byte(s), typ)
			if err != nil {
				if !errors.Is(err, listener.ErrBadValue) {
					t.Fatalf("kind %c, %q: %v", typ.Kind, s, err)
				}
				continue
			}
			if !json.Valid(out) {
				t.Fatalf("kind %c, %q: invalid JSON %q", typ.Kind, s, out)
			}
		}
	})
}
