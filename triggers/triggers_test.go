package triggers_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"github.com/pgfeed/pgfeed/internal/pgtest"
	"github.com/pgfeed/pgfeed/migrations"
	"github.com/pgfeed/pgfeed/triggers"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// newDB returns a connection to a fresh, migrated database.
func newDB(t *testing.T) (*pgx.Conn, string) {
	t.Helper()
	url := pgtest.NewMigratedDB(t)
	return pgtest.Connect(t, url), url
}

func exec(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// change is one row of pgfeed.changes.
type change struct {
	Schema, Table, Op string
	Key, New, Old     map[string]any
	TxID              uint64
}

// changes returns the log in seq order and empties it, a statement's chunk
// of rows split into one change per row.
func changes(t *testing.T, conn *pgx.Conn) []change {
	t.Helper()
	rows, err := conn.Query(context.Background(),
		`DELETE FROM pgfeed.changes RETURNING seq, txid::text::bigint, schema_name, table_name, op, key_columns, new, old`)
	if err != nil {
		t.Fatal(err)
	}
	type withSeq struct {
		seq int64
		c   []change
	}
	var out []withSeq
	for rows.Next() {
		var (
			w        withSeq
			c        change
			keyCols  []string
			newV, oV any
		)
		if err := rows.Scan(&w.seq, &c.TxID, &c.Schema, &c.Table, &c.Op, &keyCols, &newV, &oV); err != nil {
			t.Fatal(err)
		}
		keyOf := func(row map[string]any) map[string]any {
			if keyCols == nil {
				return nil
			}
			k := map[string]any{}
			for _, col := range keyCols {
				k[col] = row[col]
			}
			return k
		}
		switch {
		case c.Op == "truncate":
			w.c = append(w.c, c)
		case isArray(newV) || isArray(oV):
			chunk, _ := newV.([]any)
			if chunk == nil {
				chunk, _ = oV.([]any)
			}
			for _, r := range chunk {
				row, _ := r.(map[string]any)
				e := c
				if newV != nil {
					e.New = row
				} else {
					e.Old = row
				}
				e.Key = keyOf(row)
				w.c = append(w.c, e)
			}
		default:
			c.New, _ = newV.(map[string]any)
			c.Old, _ = oV.(map[string]any)
			if c.New != nil {
				c.Key = keyOf(c.New)
			} else {
				c.Key = keyOf(c.Old)
			}
			w.c = append(w.c, c)
		}
		out = append(out, w)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(out, func(a, b withSeq) int { return int(a.seq - b.seq) })
	var cs []change
	for _, w := range out {
		cs = append(cs, w.c...)
	}
	return cs
}

func isArray(v any) bool {
	_, ok := v.([]any)
	return ok
}

// toJSONB returns what to_jsonb gives for the row of table with id.
func toJSONB(t *testing.T, conn *pgx.Conn, table string, id int) map[string]any {
	t.Helper()
	var m map[string]any
	if err := conn.QueryRow(context.Background(), "SELECT to_jsonb(t) FROM "+table+" t WHERE id = $1", id).Scan(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

func mustEqual(t *testing.T, what string, got, want any) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(want)
		t.Errorf("%s:\n got  %s\n want %s", what, g, w)
	}
}

const typesTable = `CREATE TABLE typed (
	id int PRIMARY KEY,
	big bigint,
	num numeric,
	txt text,
	flag boolean,
	at timestamptz,
	doc jsonb,
	uid uuid,
	nums int[],
	nothing text
)`

func TestCaptureTypesAndOps(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, _ := newDB(t)
	exec(t, conn, typesTable)
	if _, err := triggers.Enable(ctx, conn, "typed"); err != nil {
		t.Fatal(err)
	}

	exec(t, conn, `INSERT INTO typed VALUES
		(1, 9007199254740993, 12345678901234567890.123456789, 'héllo "q"', true, '2026-11-27 14:05:41.123456+00', '{"a":[1,{"b":null}]}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{1,2,NULL}', NULL),
		(2, -1, 0.5, '', false, '1999-01-01 00:00:00+05', '[]', NULL, '{}', NULL)`)
	want1 := toJSONB(t, conn, "typed", 1)
	want2 := toJSONB(t, conn, "typed", 2)
	got := changes(t, conn)
	if len(got) != 2 {
		t.Fatalf("insert of 2 rows logged %d changes", len(got))
	}
	for i, w := range []map[string]any{want1, want2} {
		c := got[i]
		if c.Schema != "public" || c.Table != "typed" || c.Op != "insert" || c.Old != nil {
			t.Errorf("insert change %d: %+v", i, c)
		}
		mustEqual(t, "insert new", c.New, w)
		mustEqual(t, "insert key", c.Key, map[string]any{"id": w["id"]})
	}
	if got[0].TxID != got[1].TxID {
		t.Errorf("one statement logged two transaction ids")
	}

	before := toJSONB(t, conn, "typed", 1)
	exec(t, conn, `UPDATE typed SET num = num + 1, nums = nums || 7, doc = NULL WHERE id = 1`)
	after := toJSONB(t, conn, "typed", 1)
	got = changes(t, conn)
	if len(got) != 1 || got[0].Op != "update" {
		t.Fatalf("update logged %+v", got)
	}
	mustEqual(t, "update new", got[0].New, after)
	mustEqual(t, "update old", got[0].Old, before)

	exec(t, conn, `DELETE FROM typed WHERE id = 2`)
	got = changes(t, conn)
	if len(got) != 1 || got[0].Op != "delete" || got[0].New != nil {
		t.Fatalf("delete logged %+v", got)
	}
	mustEqual(t, "delete old", got[0].Old, want2)
	mustEqual(t, "delete key", got[0].Key, map[string]any{"id": float64(2)})

	exec(t, conn, `TRUNCATE typed`)
	got = changes(t, conn)
	if len(got) != 1 || got[0].Op != "truncate" || got[0].Key != nil || got[0].New != nil || got[0].Old != nil {
		t.Fatalf("truncate logged %+v", got)
	}

	// A rolled-back transaction leaves nothing in the log.
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO typed (id) VALUES (3)`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if got := changes(t, conn); len(got) != 0 {
		t.Errorf("rolled-back insert logged %+v", got)
	}
}

// TestLargeRow checks a row far over NOTIFY's 8000-byte payload limit is
// captured whole.
func TestLargeRow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, _ := newDB(t)
	exec(t, conn, `CREATE TABLE docs (id int PRIMARY KEY, body text)`)
	if _, err := triggers.Enable(ctx, conn, "docs"); err != nil {
		t.Fatal(err)
	}
	body := strings.Repeat("0123456789abcdef", 64*1024) // 1 MiB
	exec(t, conn, `INSERT INTO docs VALUES (1, $1)`, body)
	got := changes(t, conn)
	if len(got) != 1 || got[0].New["body"] != body {
		t.Fatalf("1 MiB row not captured whole")
	}
}

func TestCompositeKeyAndUpdatedKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, _ := newDB(t)
	exec(t, conn, `CREATE TABLE lines (order_id int, line int, qty int, PRIMARY KEY (order_id, line))`)
	tables, err := triggers.Enable(ctx, conn, "public.lines")
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "key columns", tables[0].Key, []string{"order_id", "line"})
	exec(t, conn, `INSERT INTO lines VALUES (7, 1, 3)`)
	exec(t, conn, `UPDATE lines SET line = 2 WHERE order_id = 7`)
	exec(t, conn, `DELETE FROM lines`)
	got := changes(t, conn)
	if len(got) != 3 {
		t.Fatalf("logged %d changes, want 3", len(got))
	}
	mustEqual(t, "insert key", got[0].Key, map[string]any{"order_id": float64(7), "line": float64(1)})
	mustEqual(t, "update key (the new one)", got[1].Key, map[string]any{"order_id": float64(7), "line": float64(2)})
	mustEqual(t, "update old line", got[1].Old["line"], float64(1))
	mustEqual(t, "delete key", got[2].Key, map[string]any{"order_id": float64(7), "line": float64(2)})
}

func TestAlterTableAfterEnable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, _ := newDB(t)
	exec(t, conn, `CREATE TABLE items (id int PRIMARY KEY, a text, b text)`)
	if _, err := triggers.Enable(ctx, conn, "items"); err != nil {
		t.Fatal(err)
	}
	exec(t, conn, `INSERT INTO items VALUES (1, 'a', 'b')`)
	exec(t, conn, `ALTER TABLE items ADD COLUMN c int DEFAULT 5`)
	exec(t, conn, `INSERT INTO items VALUES (2, 'a2', 'b2', 6)`)
	exec(t, conn, `ALTER TABLE items DROP COLUMN a`)
	exec(t, conn, `UPDATE items SET b = 'x' WHERE id = 1`)
	got := changes(t, conn)
	if len(got) != 3 {
		t.Fatalf("logged %d changes, want 3", len(got))
	}
	mustEqual(t, "before ADD COLUMN", got[0].New, map[string]any{"id": float64(1), "a": "a", "b": "b"})
	mustEqual(t, "after ADD COLUMN", got[1].New, map[string]any{"id": float64(2), "a": "a2", "b": "b2", "c": float64(6)})
	mustEqual(t, "after DROP COLUMN new", got[2].New, map[string]any{"id": float64(1), "b": "x", "c": float64(5)})
	mustEqual(t, "after DROP COLUMN old", got[2].Old, map[string]any{"id": float64(1), "b": "b", "c": float64(5)})
}

// TestPartitionCapturedThroughParent checks that rows written through a
// partitioned parent are captured on the partition that stores them.
func TestPartitionCapturedThroughParent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, _ := newDB(t)
	exec(t, conn, `CREATE TABLE events (id int, day date, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
		CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')`)
	tables, err := triggers.Enable(ctx, conn, "events_2026")
	if err != nil {
		t.Fatal(err)
	}
	if !tables[0].Child {
		t.Fatal("partition not recognised as a child table")
	}
	exec(t, conn, `INSERT INTO events VALUES (1, '2026-05-01'), (2, '2026-06-01')`)
	exec(t, conn, `DELETE FROM events WHERE id = 1`)
	got := changes(t, conn)
	ops := []string{}
	for _, c := range got {
		if c.Table != "events_2026" {
			t.Errorf("change on %s, want events_2026", c.Table)
		}
		ops = append(ops, c.Op)
	}
	mustEqual(t, "ops", ops, []string{"insert", "insert", "delete"})
}

func TestRefusals(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, _ := newDB(t)
	exec(t, conn, `CREATE TABLE nokey (a int);
		CREATE TABLE good (id int PRIMARY KEY);
		CREATE VIEW aview AS SELECT 1 AS id;
		CREATE MATERIALIZED VIEW amat AS SELECT 1 AS id;
		CREATE TABLE parted (id int, d date, PRIMARY KEY (id, d)) PARTITION BY RANGE (d);
		CREATE TABLE parted_a PARTITION OF parted FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
		CREATE TABLE base (id int PRIMARY KEY);
		CREATE TABLE derived (extra int) INHERITS (base);
		CREATE SEQUENCE aseq`)
	cases := []struct{ name, want string }{
		{"missing", `table "missing" does not exist`},
		{"public.missing", `table "public.missing" does not exist`},
		{"a.b.c.d", `table "a.b.c.d" is not a valid table name`},
		{"nokey", "table public.nokey has no primary key, which pgfeed needs to name each changed row: add one, for example ALTER TABLE \"public\".\"nokey\" ADD PRIMARY KEY (id)"},
		{"aview", "public.aview is a view, not a table: enable capture on the tables it reads from"},
		{"amat", "public.amat is a materialized view"},
		{"parted", "table public.parted is partitioned: pgfeed captures partitions, not the partitioned parent; enable capture on each partition instead (for example: pgfeed triggers enable public.parted_a)"},
		{"base", "table public.base has inheritance children"},
		{"aseq", "public.aseq is not a table"},
		{"pgfeed.changes", "table pgfeed.changes belongs to pgfeed itself and cannot be captured"},
		{"pg_catalog.pg_class", "table pg_catalog.pg_class is a system catalog"},
	}
	for _, c := range cases {
		_, err := triggers.Enable(ctx, conn, "good", c.name)
		if !errors.Is(err, triggers.ErrRefused) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("enable %q: error %v, want refusal containing %q", c.name, err, c.want)
		}
	}
	// All or none: good was named first but must not be captured.
	list, err := triggers.List(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 0 {
		t.Errorf("refused enable still captured %v", list)
	}
}

func TestNotMigrated(t *testing.T) {
	t.Parallel()
	conn := pgtest.Connect(t, pgtest.NewDB(t))
	exec(t, conn, `CREATE TABLE good (id int PRIMARY KEY)`)
	if _, err := triggers.Enable(context.Background(), conn, "good"); !errors.Is(err, triggers.ErrNotMigrated) {
		t.Fatalf("enable without pgfeed schema: %v", err)
	}
}

func TestEnableDisableList(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, _ := newDB(t)
	exec(t, conn, `CREATE SCHEMA shop; CREATE TABLE shop.orders (id int PRIMARY KEY); CREATE TABLE users (uid text PRIMARY KEY)`)
	if _, err := triggers.Enable(ctx, conn, "shop.orders", "users"); err != nil {
		t.Fatal(err)
	}
	// Idempotent.
	if _, err := triggers.Enable(ctx, conn, "users"); err != nil {
		t.Fatal(err)
	}
	list, err := triggers.List(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range list {
		got = append(got, c.String()+" "+c.Source+" "+c.State+" "+strings.Join(c.Key, ","))
	}
	mustEqual(t, "list", got, []string{"public.users trigger enabled uid", "shop.orders trigger enabled id"})

	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_trigger WHERE tgrelid = 'users'::regclass`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 4 {
		t.Errorf("users has %d triggers after enabling twice, want 4", n)
	}

	// States List reports.
	exec(t, conn, `ALTER TABLE users DISABLE TRIGGER pgfeed_capture_update`)
	exec(t, conn, `DROP TRIGGER pgfeed_capture_truncate ON shop.orders`)
	list, _ = triggers.List(ctx, conn)
	got = nil
	for _, c := range list {
		got = append(got, c.String()+" "+c.State)
	}
	mustEqual(t, "list states", got, []string{"public.users disabled", "shop.orders partial"})

	exec(t, conn, `ALTER TABLE users ENABLE TRIGGER pgfeed_capture_update; ALTER TABLE users DROP CONSTRAINT users_pkey; ALTER TABLE users ADD COLUMN id serial PRIMARY KEY`)
	list, _ = triggers.List(ctx, conn)
	if list[0].State != "stale-key" {
		t.Errorf("state after primary key change = %s, want stale-key", list[0].State)
	}
	if _, err := triggers.Enable(ctx, conn, "users"); err != nil {
		t.Fatal(err)
	}
	list, _ = triggers.List(ctx, conn)
	if list[0].State != "enabled" || !slices.Equal(list[0].Key, []string{"id"}) {
		t.Errorf("after re-enable: %+v", list[0])
	}

	if _, err := triggers.Disable(ctx, conn, "shop.orders", "users"); err != nil {
		t.Fatal(err)
	}
	if _, err := triggers.Disable(ctx, conn, "users"); err != nil {
		t.Fatalf("disable twice: %v", err)
	}
	list, _ = triggers.List(ctx, conn)
	if len(list) != 0 {
		t.Errorf("after disable, list = %v", list)
	}
	exec(t, conn, `INSERT INTO users (uid) VALUES ('x')`)
	if got := changes(t, conn); len(got) != 0 {
		t.Errorf("disabled table still captured: %v", got)
	}
}

// TestHostileIdentifier captures a table whose name is an SQL injection
// attempt, in a schema whose name needs quoting.
func TestHostileIdentifier(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, _ := newDB(t)
	exec(t, conn, `CREATE SCHEMA "S p"; CREATE TABLE "S p"."we""ird; drop table x" ("i""d" int PRIMARY KEY, v text); CREATE TABLE x (id int)`)
	tables, err := triggers.Enable(ctx, conn, `"S p"."we""ird; drop table x"`)
	if err != nil {
		t.Fatal(err)
	}
	if tables[0].Schema != "S p" || tables[0].Name != `we"ird; drop table x` {
		t.Fatalf("resolved as %+v", tables[0])
	}
	exec(t, conn, `INSERT INTO "S p"."we""ird; drop table x" VALUES (1, 'v')`)
	got := changes(t, conn)
	if len(got) != 1 || got[0].Schema != "S p" || got[0].Table != `we"ird; drop table x` {
		t.Fatalf("logged %+v", got)
	}
	mustEqual(t, "key", got[0].Key, map[string]any{`i"d`: float64(1)})
	if !exists(t, conn, "public.x") {
		t.Fatal("table x was dropped")
	}
	path, err := triggers.Generate(ctx, conn, t.TempDir(), []string{`"S p"."we""ird; drop table x"`}, "test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if base := filepath.Base(path); strings.ContainsAny(base, ` ";`) {
		t.Errorf("generated file name %q is not file-system safe", base)
	}
	if _, err := triggers.Disable(ctx, conn, `"S p"."we""ird; drop table x"`); err != nil {
		t.Fatal(err)
	}
	if !exists(t, conn, "public.x") {
		t.Fatal("table x was dropped")
	}
}

func exists(t *testing.T, conn *pgx.Conn, name string) bool {
	t.Helper()
	var ok bool
	if err := conn.QueryRow(context.Background(), `SELECT to_regclass($1) IS NOT NULL`, name).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}

// triggerDefs returns the definitions of the triggers on table, sorted.
func triggerDefs(t *testing.T, conn *pgx.Conn, table string) []string {
	t.Helper()
	rows, err := conn.Query(context.Background(),
		`SELECT pg_get_triggerdef(oid) || ' ' || tgenabled::text FROM pg_trigger WHERE tgrelid = $1::regclass AND NOT tgisinternal ORDER BY tgname`, table)
	if err != nil {
		t.Fatal(err)
	}
	defs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return defs
}

// TestGeneratedMigrationEqualsEnable applies a generated migration with goose
// in one database and Enable in another: the triggers must be identical, and
// the Down must leave what Disable leaves.
func TestGeneratedMigrationEqualsEnable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const schema = `CREATE TABLE orders (id bigint PRIMARY KEY, status text);
		CREATE TABLE lines (order_id bigint, n int, PRIMARY KEY (order_id, n));
		CREATE TABLE ev (id int, d date, PRIMARY KEY (id, d)) PARTITION BY RANGE (d);
		CREATE TABLE ev_1 PARTITION OF ev FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')`
	tables := []string{"orders", "public.lines", "ev_1"}

	viaEnable, _ := newDB(t)
	exec(t, viaEnable, schema)
	if _, err := triggers.Enable(ctx, viaEnable, tables...); err != nil {
		t.Fatal(err)
	}

	viaGoose, gooseURL := newDB(t)
	exec(t, viaGoose, schema)
	dir := t.TempDir()
	path, err := triggers.Generate(ctx, viaGoose, dir, tables, "pgfeed test", time.Date(2026, 11, 27, 14, 5, 41, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(path) != "20261127140541_pgfeed_capture_orders_lines_ev_1.sql" {
		t.Errorf("generated %s", filepath.Base(path))
	}
	if _, err := triggers.Generate(ctx, viaGoose, dir, tables, "pgfeed test", time.Date(2026, 11, 27, 14, 5, 41, 0, time.UTC)); err == nil {
		t.Error("Generate overwrote an existing file")
	}
	text, _ := os.ReadFile(path)
	if !strings.Contains(string(text), "-- +goose Up") || !strings.Contains(string(text), "-- +goose Down") {
		t.Fatalf("not a goose migration:\n%s", text)
	}

	// The DBA's own goose setup: default version table, their directory.
	db, err := sql.Open("pgx", gooseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, db, os.DirFS(dir), goose.WithDisableGlobalRegistry(true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Up(ctx); err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"orders", "lines", "ev_1"} {
		mustEqual(t, "triggers on "+table, triggerDefs(t, viaGoose, table), triggerDefs(t, viaEnable, table))
		if len(triggerDefs(t, viaGoose, table)) != 4 {
			t.Errorf("%s: want 4 triggers", table)
		}
	}
	l1, _ := triggers.List(ctx, viaEnable)
	l2, _ := triggers.List(ctx, viaGoose)
	mustEqual(t, "list", l2, l1)

	if _, err := p.Down(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := triggers.Disable(ctx, viaEnable, tables...); err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"orders", "lines", "ev_1"} {
		if defs := triggerDefs(t, viaGoose, table); len(defs) != 0 {
			t.Errorf("after Down, %s has triggers %v", table, defs)
		}
	}
}

// TestNotifyOncePerTransaction checks the wake-up: one notification per
// writing transaction, carrying its id, none while every listener is awake.
func TestNotifyOncePerTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, url := newDB(t)
	exec(t, conn, `CREATE TABLE n (id int PRIMARY KEY, v int)`)
	if _, err := triggers.Enable(ctx, conn, "n"); err != nil {
		t.Fatal(err)
	}
	listener := listenWakeUps(t, url)

	tx, _ := conn.Begin(ctx)
	for i := range 5 {
		if _, err := tx.Exec(ctx, `INSERT INTO n VALUES ($1, 0)`, i); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tx.Exec(ctx, `UPDATE n SET v = 1; DELETE FROM n WHERE id = 0`); err != nil {
		t.Fatal(err)
	}
	var first, second string
	if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&first); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// Every listener awake: the next transaction skips the NOTIFY.
	exec(t, conn, `INSERT INTO pgfeed.listeners VALUES ('node-a', now() + interval '1 hour')`)
	exec(t, conn, `INSERT INTO n VALUES (100, 0)`)
	// One listener asleep: NOTIFY again.
	exec(t, conn, `INSERT INTO pgfeed.listeners VALUES ('node-b', now() - interval '1 second')`)
	if err := conn.QueryRow(ctx, `INSERT INTO n VALUES (101, 0) RETURNING pg_current_xact_id()::text`).Scan(&second); err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "notifications", wakeUps(t, conn, listener), []string{first, second})
}

// listenWakeUps returns a connection listening on channel pgfeed, for
// wakeUps.
func listenWakeUps(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	listener := pgtest.Connect(t, url)
	exec(t, listener, `LISTEN pgfeed`)
	return listener
}

// wakeUps sends a marker notification through conn and returns the
// payloads listener received on channel pgfeed before it.
func wakeUps(t *testing.T, conn, listener *pgx.Conn) []string {
	t.Helper()
	ctx := context.Background()
	exec(t, conn, `NOTIFY pgfeed, 'marker'`)
	var payloads []string
	for {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		n, err := listener.WaitForNotification(wctx)
		cancel()
		if err != nil {
			t.Fatalf("after %q: %v", payloads, err)
		}
		if n.Payload == "marker" {
			return payloads
		}
		payloads = append(payloads, n.Payload)
	}
}

// TestAwakeFlagFollowsListeners: the sequence writers read holds the
// earliest promise of pgfeed.listeners, 0 when a listener is not reading
// or there is none, whatever changes the table.
func TestAwakeFlagFollowsListeners(t *testing.T) {
	t.Parallel()
	conn, _ := newDB(t)
	flag := func(step string, want string) {
		t.Helper()
		var got, expect int64
		if err := conn.QueryRow(context.Background(), `SELECT coalesce(pg_sequence_last_value('pgfeed.awake_until'), 0), `+want).Scan(&got, &expect); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if got != expect {
			t.Errorf("%s: awake_until %d, want %d", step, got, expect)
		}
	}
	const later, soon = `'2100-01-01 00:00:00.123+00'`, `'2099-01-01 00:00:00+00'`
	ms := func(ts string) string { return `(extract(epoch FROM timestamptz ` + ts + `) * 1000)::bigint` }
	flag("no listener", "0")
	exec(t, conn, `INSERT INTO pgfeed.listeners (node, awake_until) VALUES ('a', `+later+`)`)
	flag("one awake", ms(later))
	exec(t, conn, `INSERT INTO pgfeed.listeners (node, awake_until) VALUES ('b', `+soon+`)`)
	flag("two awake", ms(soon))
	exec(t, conn, `UPDATE pgfeed.listeners SET awake_until = '-infinity' WHERE node = 'b'`)
	flag("one asleep", "0")
	exec(t, conn, `DELETE FROM pgfeed.listeners WHERE node = 'b'`)
	flag("the sleeper gone", ms(later))
	exec(t, conn, `TRUNCATE pgfeed.listeners`)
	flag("all gone", "0")
}

func openSQL(tb testing.TB, url string) *sql.DB {
	tb.Helper()
	db, err := sql.Open("pgx", url)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := migrations.Up(context.Background(), db); err != nil {
		tb.Fatal(err)
	}
	return db
}

// TestCaptureInUTC: timestamptz values read the same whatever time zone
// the writing session uses.
func TestCaptureInUTC(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, _ := newDB(t)
	exec(t, conn, `CREATE TABLE ev (id int PRIMARY KEY, at timestamptz)`)
	if _, err := triggers.Enable(ctx, conn, "ev"); err != nil {
		t.Fatal(err)
	}
	exec(t, conn, `SET timezone = 'America/New_York'`)
	exec(t, conn, `INSERT INTO ev VALUES (1, '2026-11-27 14:05:41.5+00')`)
	exec(t, conn, `UPDATE ev SET at = at + interval '1 hour'`)
	exec(t, conn, `DELETE FROM ev`)
	for _, c := range changes(t, conn) {
		for _, row := range []map[string]any{c.New, c.Old} {
			if row == nil {
				continue
			}
			if at, _ := row["at"].(string); !strings.HasSuffix(at, "+00:00") {
				t.Errorf("%s: at = %q, want UTC", c.Op, at)
			}
		}
	}
}

// tempRole creates a role, named prefix + the database's name so that
// parallel tests on one server do not collide, and drops it (and what it
// owns in the database at url) when the test ends. It returns the name,
// plain and quoted.
func tempRole(t *testing.T, conn *pgx.Conn, url, prefix string) (role, quoted string) {
	t.Helper()
	if err := conn.QueryRow(context.Background(), `SELECT $1::text || current_database()`, prefix).Scan(&role); err != nil {
		t.Fatal(err)
	}
	quoted = pgx.Identifier{role}.Sanitize()
	exec(t, conn, `CREATE ROLE `+quoted+` NOLOGIN`)
	t.Cleanup(func() {
		_, _ = pgtest.Connect(t, url).Exec(context.Background(), `DROP OWNED BY `+quoted+`; DROP ROLE `+quoted)
	})
	return role, quoted
}

// TestUnprivilegedWriter: an application role with no rights on schema
// pgfeed writes to a captured table; every change is logged and wakes the
// listener, while the role itself can neither write the log nor call the
// wake-up.
func TestUnprivilegedWriter(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, url := newDB(t)
	role, quoted := tempRole(t, conn, url, "writer_")
	exec(t, conn, `CREATE TABLE w (id int PRIMARY KEY, v int)`)
	if _, err := triggers.Enable(ctx, conn, "w"); err != nil {
		t.Fatal(err)
	}
	exec(t, conn, `GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON w TO `+quoted)
	listener := listenWakeUps(t, url)

	exec(t, conn, `SET ROLE `+quoted)
	var xids []string
	for _, sql := range []string{
		`INSERT INTO w VALUES (1, 0)`, `UPDATE w SET v = 1`, `DELETE FROM w`, `TRUNCATE w`,
	} {
		var xid string
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, sql); err != nil {
				return err
			}
			return tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&xid)
		})
		if err != nil {
			t.Fatalf("%s as %s: %v", sql, role, err)
		}
		xids = append(xids, xid)
	}
	for _, sql := range []string{`SELECT pgfeed.wake()`, `INSERT INTO pgfeed.changes (schema_name, table_name, op) VALUES ('public', 'w', 'truncate')`} {
		var pgErr *pgconn.PgError
		if _, err := conn.Exec(ctx, sql); !errors.As(err, &pgErr) || pgErr.Code != "42501" {
			t.Errorf("%s as %s: %v, want permission denied", sql, role, err)
		}
	}
	exec(t, conn, `RESET ROLE`)

	var ops []string
	for _, c := range changes(t, conn) {
		ops = append(ops, c.Op)
	}
	mustEqual(t, "ops", ops, []string{"insert", "update", "delete", "truncate"})
	mustEqual(t, "notifications", wakeUps(t, conn, listener), xids)
}

// TestStatementSizes: a statement of no row logs nothing and sends no
// wake-up; one of one row logs that row (the one-row shortcut); bigger ones
// log every row once, in chunks of bounded size.
func TestStatementSizes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, url := newDB(t)
	exec(t, conn, `CREATE TABLE s (id int PRIMARY KEY, pad text)`)
	if _, err := triggers.Enable(ctx, conn, "s"); err != nil {
		t.Fatal(err)
	}
	listener := listenWakeUps(t, url)
	logRows := func() (n int) {
		t.Helper()
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM pgfeed.changes`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	ids := func(cs []change, op string) []int {
		t.Helper()
		var got []int
		for _, c := range cs {
			if c.Op != op {
				t.Fatalf("op %q, want %q", c.Op, op)
			}
			got = append(got, int(c.Key["id"].(float64)))
		}
		slices.Sort(got)
		return got
	}
	span := func(from, to int) (s []int) {
		for i := from; i <= to; i++ {
			s = append(s, i)
		}
		return s
	}
	// 2,000 rows of 1 KB make about 2.3 MB: ten chunks or so.
	const pad = `repeat(md5(g::text), 32)`
	for _, step := range []struct {
		sql      string
		op       string
		ids      []int
		min, max int // log rows written
	}{
		{`INSERT INTO s SELECT g, 'x' FROM generate_series(1, 0) g`, "insert", nil, 0, 0},
		{`INSERT INTO s VALUES (1, 'x')`, "insert", []int{1}, 1, 1},
		{`INSERT INTO s VALUES (2, 'x'), (3, 'x')`, "insert", []int{2, 3}, 1, 1},
		{`INSERT INTO s SELECT g, ` + pad + ` FROM generate_series(4, 2003) g`, "insert", span(4, 2003), 5, 20},
		{`DELETE FROM s WHERE id > 2003`, "delete", nil, 0, 0},
		{`DELETE FROM s WHERE id = 1`, "delete", []int{1}, 1, 1},
		{`DELETE FROM s WHERE id IN (2, 3)`, "delete", []int{2, 3}, 1, 1},
		{`DELETE FROM s`, "delete", span(4, 2003), 5, 20},
	} {
		exec(t, conn, step.sql)
		if n := logRows(); n < step.min || n > step.max {
			t.Errorf("%s: %d log rows, want %d to %d", step.sql, n, step.min, step.max)
		}
		mustEqual(t, step.sql, ids(changes(t, conn), step.op), step.ids)
	}
	// Six statements (transactions) logged something: six wake-ups.
	if n := len(wakeUps(t, conn, listener)); n != 6 {
		t.Errorf("%d wake-ups, want 6", n)
	}
}

// TestWakeIgnoresSearchPath: pgfeed.wake() runs as its owner without a
// search_path of its own, so a caller that may use schema pgfeed must not
// be able to slip its own functions or operators into it.
func TestWakeIgnoresSearchPath(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, url := newDB(t)
	_, quoted := tempRole(t, conn, url, "caller_")
	exec(t, conn, `GRANT USAGE ON SCHEMA pgfeed TO `+quoted)
	exec(t, conn, `CREATE SCHEMA evil AUTHORIZATION `+quoted)
	exec(t, conn, `SET ROLE `+quoted)
	exec(t, conn, `CREATE FUNCTION evil.hijack() RETURNS text LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked as %', current_user; END $$`)
	for _, f := range []string{
		`current_setting(text, boolean) RETURNS text`,
		`set_config(text, text, boolean) RETURNS text`,
		`pg_sequence_last_value(regclass) RETURNS bigint`,
		`clock_timestamp() RETURNS timestamptz`,
		`pg_notify(text, text) RETURNS void`,
		`pg_current_xact_id() RETURNS xid8`,
	} {
		name, ret, _ := strings.Cut(f, " RETURNS ")
		exec(t, conn, `CREATE FUNCTION evil.`+name+` RETURNS `+ret+` LANGUAGE plpgsql AS $$ BEGIN PERFORM evil.hijack(); END $$`)
	}
	exec(t, conn, `CREATE FUNCTION evil.eq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN PERFORM evil.hijack(); END $$`)
	exec(t, conn, `CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.eq)`)
	exec(t, conn, `CREATE FUNCTION evil.gt(bigint, bigint) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN PERFORM evil.hijack(); END $$`)
	exec(t, conn, `CREATE OPERATOR evil.> (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.gt)`)
	exec(t, conn, `SET search_path = evil, pg_catalog`)
	var woke bool
	if err := conn.QueryRow(ctx, `SELECT pgfeed.wake()`).Scan(&woke); err != nil {
		t.Fatalf("wake() with a hostile search_path: %v", err)
	}
	if !woke {
		t.Error("wake() sent no wake-up with no listener awake")
	}
	exec(t, conn, `RESET search_path; RESET ROLE`)
}
