package listener_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgfeed/pgfeed/internal/pgtemp"
	"github.com/pgfeed/pgfeed/internal/pgtest"
	"github.com/pgfeed/pgfeed/listener"
	"github.com/pgfeed/pgfeed/triggers"
)

// logicalRun is a Logical source running on a test database.
type logicalRun struct {
	src  *listener.Logical
	col  *collector
	stop func() error // stops Run and returns its error; idempotent
}

// startLogical runs a Logical source on url's database, streaming from
// slot, until stop or the end of the test.
func startLogical(t *testing.T, url, slot string, cfg listener.LogicalConfig) *logicalRun {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	repl, err := listener.ReplicationConnector(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DB, cfg.Replicate, cfg.Slot = pool, repl, slot
	if cfg.Publication == "" {
		cfg.Publication = "pgfeed"
	}
	src := listener.NewLogical(cfg)
	col := newCollector()
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- src.Run(rctx, col.emit) }()
	var (
		stopped bool
		runErr  error
	)
	r := &logicalRun{src: src, col: col, stop: func() error {
		if !stopped {
			stopped = true
			cancel()
			runErr = <-done
		}
		return runErr
	}}
	t.Cleanup(func() {
		if err := r.stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-src.Ready():
	case err := <-done:
		stopped = true
		t.Fatalf("logical source ended before streaming: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("logical source not ready after 30 s")
	}
	return r
}

// comparedTypes is a table with a column of each common type, and the
// values of a row of it.
const comparedTypes = `
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TYPE pair AS (a int, b text);
CREATE TABLE typed (
	id int PRIMARY KEY, i2 int2, i8 int8, num numeric, f4 float4, f8 float8, txt text, vc varchar(10), ch char(4),
	b boolean, d date, ts timestamp, tstz timestamptz, tm time, iv interval, by bytea, ip inet, u uuid,
	jb jsonb, js json, ia int[], ta text[], tza timestamptz[], p pair, m mood, pi posint, pt point, mo money, nothing text);
CREATE TABLE typed_full (LIKE typed INCLUDING ALL);
ALTER TABLE typed_full REPLICA IDENTITY FULL;
CREATE TABLE multi (a int, b text, v text, PRIMARY KEY (b, a));
`

// typedRow is the VALUES of row id of typed, varied by n.
func typedRow(id, n int) string {
	return fmt.Sprintf(`(%d, %d, 9007199254740993, 12345678901234567890.123456789, 1.5, 0.1, 'héllo "q" \ <&> %d
tab	', 'abc', 'ab', true, '2026-11-27', '2026-11-27 14:05:41.123456', '2026-11-27 14:05:41.5+05:30', '14:05:41.5',
		'1 day 2 hours', '\xdeadbeef', '192.168.0.1/24', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"b":[1,{"c":null}],"a":"x%d"}',
		'{"a": [1, 2], "b": "x"}', '{1,2,NULL}', '{"a,b","c\"d",NULL,"NULL",""}', ARRAY['2026-11-27 14:05:41+00'::timestamptz],
		ROW(%d, 'x y'), 'happy', 5, '(1,2)', 12.5, NULL)`, id, n, n, n, n)
}

// TestLogicalMatchesTriggers runs one workload over many types through
// both sources and compares the changes, cursor and commit time aside:
// identical for REPLICA IDENTITY FULL tables; for default identity, old
// holds the key only (what the identity gives).
func TestLogicalMatchesTriggers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewMigratedDB(t)
	slot := pgtest.Slot(t, url)
	conn := pgtest.Connect(t, url)
	if _, err := conn.Exec(ctx, comparedTypes+`CREATE PUBLICATION pgfeed FOR TABLE typed, typed_full, multi`); err != nil {
		t.Fatal(err)
	}
	if _, err := triggers.Enable(ctx, conn, "typed", "typed_full", "multi"); err != nil {
		t.Fatal(err)
	}
	lr := startLogical(t, url, slot, listener.LogicalConfig{})
	first, _, err := listener.CreateTick(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	var script []string
	for _, tbl := range []string{"typed", "typed_full"} {
		script = append(script,
			`INSERT INTO `+tbl+` VALUES `+typedRow(1, 1)+`, `+typedRow(2, 2),
			`UPDATE `+tbl+` SET txt = 'changed', jb = '[]', ia = '{}', f8 = 'NaN', num = 'Infinity', d = 'infinity' WHERE id = 1`,
			`UPDATE `+tbl+` SET id = 3 WHERE id = 2`,
			`BEGIN; INSERT INTO `+tbl+` VALUES `+typedRow(4, 4)+`; UPDATE `+tbl+` SET nothing = 'x' WHERE id = 4; DELETE FROM `+tbl+` WHERE id = 1; COMMIT`,
			`DELETE FROM `+tbl+` WHERE id = 3`,
		)
	}
	script = append(script,
		`INSERT INTO multi VALUES (1, 'k', 'v'), (2, 'k', 'w')`,
		`UPDATE multi SET v = 'z' WHERE a = 1`,
		`UPDATE multi SET a = 5 WHERE a = 2`,
		`DELETE FROM multi`,
		`TRUNCATE typed, typed_full`,
	)
	for _, s := range script {
		if _, err := conn.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	last, _, err := listener.CreateTick(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	var want []listener.Change
	for id := first.ID + 1; id <= last.ID; id++ {
		b, err := listener.ReadBatch(ctx, conn, id)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, b.Changes...)
	}
	got := lr.col.waitFor(t, len(want), 30*time.Second)
	if len(got) != len(want) {
		t.Fatalf("logical source gave %d changes, triggers %d", len(got), len(want))
	}
	for i := range want {
		w, g := want[i], got[i]
		what := fmt.Sprintf("change %d (%s %s.%s)", i, w.Op, w.Schema, w.Table)
		if g.Op != w.Op || g.Schema != w.Schema || g.Table != w.Table {
			t.Fatalf("%s: logical gave %s %s.%s", what, g.Op, g.Schema, g.Table)
		}
		if !sameJSONOrNull(g.Key, w.Key) {
			t.Errorf("%s: key\n logical  %s\n triggers %s", what, g.Key, w.Key)
		}
		if !sameJSONOrNull(g.New, w.New) {
			t.Errorf("%s: new\n logical  %s\n triggers %s", what, g.New, w.New)
		}
		wantOld := w.Old
		if w.Table != "typed_full" && len(w.Old) > 0 {
			wantOld = keyOnly(t, w.Old, w.Table)
		}
		if !sameJSONOrNull(g.Old, wantOld) {
			t.Errorf("%s: old\n logical  %s\n want     %s", what, g.Old, wantOld)
		}
		if g.Unchanged != nil {
			t.Errorf("%s: unchanged %v without TOASTed values", what, g.Unchanged)
		}
		// Byte for byte too: both write a row's columns in table order
		// and every value as to_jsonb does, json columns included.
		if len(w.New) > 0 && !bytes.Equal(g.New, compact(t, w.New)) {
			t.Errorf("%s: new not byte-identical\n logical  %s\n triggers %s", what, g.New, compact(t, w.New))
		}
		if len(w.Key) > 0 && !bytes.Equal(g.Key, compact(t, w.Key)) {
			t.Errorf("%s: key not byte-identical\n logical  %s\n triggers %s", what, g.Key, compact(t, w.Key))
		}
		if w.Table == "typed_full" && len(w.Old) > 0 && !bytes.Equal(g.Old, compact(t, w.Old)) {
			t.Errorf("%s: old not byte-identical\n logical  %s\n triggers %s", what, g.Old, compact(t, w.Old))
		}
	}
	if len(want) < 20 {
		t.Fatalf("the workload gave only %d changes", len(want))
	}
	t.Logf("compared %d changes; e.g. logical %s", len(want), got[2].New)
	// Cursors: the commit LSN and the position inside the transaction,
	// increasing.
	for i := 1; i < len(got); i++ {
		if !got[i-1].Cursor.Less(got[i].Cursor) {
			t.Fatalf("cursor %v after %v", got[i].Cursor, got[i-1].Cursor)
		}
	}
}

// dbName is the database name in url.
func dbName(t *testing.T, url string) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Database
}

// keyOnly cuts a row to the key columns of the test tables.
func keyOnly(t *testing.T, row json.RawMessage, table string) json.RawMessage {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(row, &m); err != nil {
		t.Fatal(err)
	}
	keys := []string{"id"}
	if table == "multi" {
		keys = []string{"a", "b"}
	}
	out := map[string]json.RawMessage{}
	for _, k := range keys {
		out[k] = m[k]
	}
	b, _ := json.Marshal(out)
	return b
}

func compact(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func sameJSONOrNull(a, b []byte) bool {
	null := func(x []byte) bool { x = bytes.TrimSpace(x); return len(x) == 0 || string(x) == "null" }
	if null(a) || null(b) {
		return null(a) == null(b)
	}
	return sameJSON(a, b)
}

// TestLogicalTOAST: a 1 MB value arrives whole; an update that leaves it
// unchanged carries it from the old row under REPLICA IDENTITY FULL, and
// otherwise leaves it out of new and names it in Unchanged.
func TestLogicalTOAST(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewDB(t)
	slot := pgtest.Slot(t, url)
	conn := pgtest.Connect(t, url)
	if _, err := conn.Exec(ctx, `
		CREATE TABLE docs (id int PRIMARY KEY, body text, n int);
		CREATE TABLE docs_full (id int PRIMARY KEY, body text, n int);
		ALTER TABLE docs_full REPLICA IDENTITY FULL;
		CREATE PUBLICATION pgfeed FOR TABLE docs, docs_full`); err != nil {
		t.Fatal(err)
	}
	lr := startLogical(t, url, slot, listener.LogicalConfig{})
	// 1 MiB of hex digits, stored out of line.
	var big string
	if err := conn.QueryRow(ctx, `SELECT string_agg(md5(i::text), '') FROM generate_series(1, 32768) i`).Scan(&big); err != nil {
		t.Fatal(err)
	}
	for _, tbl := range []string{"docs", "docs_full"} {
		if _, err := conn.Exec(ctx, `INSERT INTO `+tbl+` VALUES (1, $1, 0)`, big); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, `UPDATE `+tbl+` SET n = 1`); err != nil {
			t.Fatal(err)
		}
	}
	var stored string
	if err := conn.QueryRow(ctx, `SELECT body FROM docs`).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	got := lr.col.waitFor(t, 4, 30*time.Second)
	body := func(row json.RawMessage) (string, bool) {
		var m map[string]any
		if err := json.Unmarshal(row, &m); err != nil {
			t.Fatal(err)
		}
		v, ok := m["body"].(string)
		return v, ok
	}
	if b, _ := body(got[0].New); b != big || stored != big {
		t.Fatalf("insert: body of %d bytes, want the whole 1 MiB value", len(b))
	}
	// Default identity: body left out of new, named unchanged; old is the key.
	upd := got[1]
	if _, ok := body(upd.New); ok || !slices.Equal(upd.Unchanged, []string{"body"}) {
		t.Errorf("update, default identity: new %.100s, unchanged %v; want body left out and named", upd.New, upd.Unchanged)
	}
	if string(upd.Old) != `{"id":1}` {
		t.Errorf("update, default identity: old %s, want the key", upd.Old)
	}
	// FULL: body filled from the old row.
	full := got[3]
	if b, ok := body(full.New); !ok || len(b) != len(stored) || full.Unchanged != nil {
		t.Errorf("update, identity full: body of %d bytes (%v), unchanged %v; want the whole value", len(b), ok, full.Unchanged)
	}
	if b, _ := body(full.Old); len(b) != len(stored) {
		t.Errorf("update, identity full: old body of %d bytes", len(b))
	}
}

// TestLogicalSchemaChange: columns added and dropped mid-stream show in
// the rows that follow.
func TestLogicalSchemaChange(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewDB(t)
	slot := pgtest.Slot(t, url)
	conn := pgtest.Connect(t, url)
	if _, err := conn.Exec(ctx, `CREATE TABLE t (id int PRIMARY KEY, a text, b int);
		CREATE PUBLICATION pgfeed FOR TABLE t`); err != nil {
		t.Fatal(err)
	}
	lr := startLogical(t, url, slot, listener.LogicalConfig{})
	for _, s := range []string{
		`INSERT INTO t VALUES (1, 'x', 1)`,
		`ALTER TABLE t ADD COLUMN c jsonb DEFAULT '{"k":1}'`,
		`INSERT INTO t VALUES (2, 'y', 2, '[2]')`,
		`ALTER TABLE t DROP COLUMN a`,
		`UPDATE t SET b = 3 WHERE id = 1`,
		`BEGIN; ALTER TABLE t ADD COLUMN d int; INSERT INTO t VALUES (3, 3, NULL, 4); ALTER TABLE t DROP COLUMN b; INSERT INTO t VALUES (4, NULL, 5); COMMIT`,
	} {
		if _, err := conn.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	got := lr.col.waitFor(t, 5, 30*time.Second)
	want := []string{
		`{"a":"x","b":1,"id":1}`,
		`{"a":"y","b":2,"c":[2],"id":2}`,
		`{"b":3,"c":{"k":1},"id":1}`,
		`{"b":3,"c":null,"d":4,"id":3}`,
		`{"c":null,"d":5,"id":4}`,
	}
	for i, w := range want {
		if !sameJSON(got[i].New, []byte(w)) {
			t.Errorf("change %d: new %s, want %s", i, got[i].New, w)
		}
	}
}

// TestLogicalRefusals: wal_level and the REPLICATION attribute are checked
// by functions fed the values; a role without REPLICATION and a slot in
// use are refused by Setup on a real server.
func TestLogicalRefusals(t *testing.T) {
	t.Parallel()
	for _, level := range []string{"replica", "minimal"} {
		err := listener.CheckWALLevel(level)
		if !errors.Is(err, listener.ErrRefused) || !strings.Contains(err.Error(), "wal_level = logical") {
			t.Errorf("wal_level %s: %v", level, err)
		}
	}
	if err := listener.CheckWALLevel("logical"); err != nil {
		t.Errorf("wal_level logical: %v", err)
	}
	if err := listener.CheckRole("r", true, false); err != nil {
		t.Errorf("superuser: %v", err)
	}

	ctx := context.Background()
	url := pgtest.NewDB(t)
	conn := pgtest.Connect(t, url)
	role := "norepl_" + strings.TrimPrefix(dbName(t, url), "pgfeed_test_") // roles are global too
	if _, err := conn.Exec(ctx, `CREATE ROLE `+pgx.Identifier{role}.Sanitize()+` LOGIN NOREPLICATION`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = pgtest.Connect(t, url).Exec(context.Background(), `DROP ROLE IF EXISTS `+pgx.Identifier{role}.Sanitize())
	})
	roleURL := strings.Replace(url, "postgres@", role+"@", 1)
	pool, err := pgxpool.New(ctx, roleURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	repl, _ := listener.ReplicationConnector(roleURL)
	err = listener.NewLogical(listener.LogicalConfig{DB: pool, Replicate: repl, Slot: "never_made"}).Setup(ctx)
	if !errors.Is(err, listener.ErrRefused) || !strings.Contains(err.Error(), "REPLICATION") {
		t.Errorf("role without REPLICATION: %v", err)
	}

	slot := pgtest.Slot(t, url)
	startLogical(t, url, slot, listener.LogicalConfig{})
	pool2, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool2.Close()
	repl2, _ := listener.ReplicationConnector(url)
	err = listener.NewLogical(listener.LogicalConfig{DB: pool2, Replicate: repl2, Slot: slot, SlotWait: 100 * time.Millisecond}).Setup(ctx)
	if !errors.Is(err, listener.ErrRefused) || !strings.Contains(err.Error(), "in use") {
		t.Errorf("slot in use: %v", err)
	}
}

// TestLogicalConfirm: the slot is confirmed up to what Keep allows and no
// further while MaxRetainedWAL allows, and past it when Keep lets go.
func TestLogicalConfirm(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewDB(t)
	slot := pgtest.Slot(t, url)
	conn := pgtest.Connect(t, url)
	if _, err := conn.Exec(ctx, `CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pgfeed FOR TABLE t`); err != nil {
		t.Fatal(err)
	}
	var keep atomic.Int64 // a Tick; 0: hold the slot where it is
	lr := startLogical(t, url, slot, listener.LogicalConfig{
		StatusInterval: 20 * time.Millisecond,
		Keep:           func() listener.Cursor { return listener.Cursor{Tick: keep.Load()} },
	})
	start := lr.src.Position()
	for i := range 3 {
		if _, err := conn.Exec(ctx, `INSERT INTO t VALUES ($1)`, i); err != nil {
			t.Fatal(err)
		}
	}
	got := lr.col.waitFor(t, 3, 30*time.Second)
	// Each batch follows the one before, the first where the source
	// started: the cursors in between are the same position.
	lr.col.mu.Lock()
	froms := slices.Clone(lr.col.froms)
	lr.col.mu.Unlock()
	want := []listener.Cursor{start, {Tick: got[0].Cursor.Tick + 1}, {Tick: got[1].Cursor.Tick + 1}}
	if !slices.Equal(froms, want) || start.Tick >= got[0].Cursor.Tick {
		t.Errorf("batches follow %v, want %v (before %v)", froms, want, got[0].Cursor)
	}
	hold := got[1].Cursor.Tick // keep the second transaction resumable
	keep.Store(hold)
	confirmed := func() int64 {
		var lsn string
		if err := conn.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&lsn); err != nil {
			t.Fatal(err)
		}
		p, err := pglogrepl.ParseLSN(lsn)
		if err != nil {
			t.Fatal(err)
		}
		return int64(p)
	}
	// Status updates keep coming (reply_time moves on); the slot reaches
	// the held transaction and stays there.
	replies := func() string {
		var at string
		if err := conn.QueryRow(ctx, `SELECT coalesce(max(reply_time)::text, '') FROM pg_stat_replication WHERE application_name = 'pgfeed-logical'`).Scan(&at); err != nil {
			t.Fatal(err)
		}
		return at
	}
	poll := time.NewTicker(5 * time.Millisecond) // status updates go every 20 ms
	defer poll.Stop()
	deadline := time.Now().Add(30 * time.Second)
	for ; confirmed() != hold; <-poll.C {
		if time.Now().After(deadline) {
			t.Fatalf("slot confirmed at %d, want the held transaction's %d", confirmed(), hold)
		}
	}
	for seen, last := 0, replies(); seen < 3; <-poll.C {
		if r := replies(); r != last {
			seen, last = seen+1, r
		}
		if c := confirmed(); c != hold {
			t.Fatalf("slot confirmed at %d past Keep %d", c, hold)
		}
		if time.Now().After(deadline) {
			t.Fatal("no status updates")
		}
	}
	keep.Store(1 << 62) // let go
	for ; confirmed() <= got[2].Cursor.Tick; <-poll.C {
		if time.Now().After(deadline) {
			t.Fatalf("slot confirmed at %d after Keep let go, want past %d", confirmed(), got[2].Cursor.Tick)
		}
	}
}

// TestLogicalRetainedWALWarning: a slot that grew while its pgfeed was
// stopped is reported at the next start: a warning and the measure.
func TestLogicalRetainedWALWarning(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewDB(t)
	slot := pgtest.Slot(t, url)
	conn := pgtest.Connect(t, url)
	if _, err := conn.Exec(ctx, `CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION pgfeed FOR TABLE t`); err != nil {
		t.Fatal(err)
	}
	first := startLogical(t, url, slot, listener.LogicalConfig{})
	if err := first.stop(); err != nil {
		t.Fatal(err)
	}
	// While no pgfeed streams, 1 MB of WAL, written out at commit (the test
	// server's synchronous_commit is off: the WAL could otherwise wait in
	// its buffers, where pg_current_wal_lsn does not count it yet).
	if _, err := conn.Exec(ctx, `SET synchronous_commit = on`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO t SELECT g, repeat('x', 1000) FROM generate_series(1, 1000) g`); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	second := startLogical(t, url, slot, listener.LogicalConfig{
		MaxRetainedWAL: 100 << 10,
		Logger:         slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if n := second.src.RetainedWAL(); n < 1<<20 {
		t.Errorf("retained WAL measured at %d bytes, want at least the 1 MB written", n)
	}
	if !strings.Contains(logs.String(), "keeps more WAL than logical.max_retained_wal") {
		t.Errorf("no warning logged:\n%s", logs.String())
	}
	second.col.waitFor(t, 1000, 30*time.Second)
}

// syncBuffer is a bytes.Buffer safe for a logger and a test together.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestLogicalMaxRetainedWAL: with Keep holding the slot, the confirmed
// position still moves on once the slot would keep more than three
// quarters of MaxRetainedWAL.
func TestLogicalMaxRetainedWAL(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewDB(t)
	slot := pgtest.Slot(t, url)
	conn := pgtest.Connect(t, url)
	if _, err := conn.Exec(ctx, `CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION pgfeed FOR TABLE t`); err != nil {
		t.Fatal(err)
	}
	lr := startLogical(t, url, slot, listener.LogicalConfig{
		StatusInterval: 20 * time.Millisecond,
		MaxRetainedWAL: 256 << 10,
		Keep:           func() listener.Cursor { return listener.Cursor{} }, // hold
	})
	start := lr.src.Confirmed()
	if _, err := conn.Exec(ctx, `INSERT INTO t SELECT g, repeat('x', 1000) FROM generate_series(1, 2000) g`); err != nil {
		t.Fatal(err)
	}
	got := lr.col.waitFor(t, 2000, 30*time.Second)
	var current string
	if err := conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&current); err != nil {
		t.Fatal(err)
	}
	end, _ := pglogrepl.ParseLSN(current)
	poll := time.NewTicker(5 * time.Millisecond) // status updates go every 20 ms
	defer poll.Stop()
	for deadline := time.Now().Add(30 * time.Second); ; <-poll.C {
		c := lr.src.Confirmed()
		if c > start && int64(end)-int64(c) <= 256<<10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("confirmed %s (started at %s, change at %d, WAL at %s): held past the bound", c, start, got[0].Cursor.Tick, end)
		}
	}
}

// TestLogicalLostSlot: a slot PostgreSQL invalidated while no pgfeed
// streamed (max_slot_wal_keep_size) is refused at start, saying what to do,
// instead of being retried for ever.
func TestLogicalLostSlot(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv, err := pgtemp.Start(ctx, pgtemp.Options{Settings: map[string]string{"max_slot_wal_keep_size": "0", "wal_keep_size": "0"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	url := srv.URL("postgres")
	conn := pgtest.Connect(t, url)
	if _, err := conn.Exec(ctx, `CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pgfeed FOR TABLE t`); err != nil {
		t.Fatal(err)
	}
	if err := startLogical(t, url, "lost", listener.LogicalConfig{}).stop(); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := conn.Exec(ctx, `INSERT INTO t VALUES ($1)`, i); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, `SELECT pg_switch_wal()`); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, `CHECKPOINT`); err != nil {
		t.Fatal(err)
	}
	var status string
	if err := conn.QueryRow(ctx, `SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'lost'`).Scan(&status); err != nil || status != "lost" {
		t.Skipf("the slot was not invalidated (wal_status %q, %v)", status, err)
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	repl, _ := listener.ReplicationConnector(url)
	err = listener.NewLogical(listener.LogicalConfig{DB: pool, Replicate: repl, Slot: "lost"}).Setup(ctx)
	if !errors.Is(err, listener.ErrRefused) || !strings.Contains(err.Error(), "has lost WAL it needed") || !strings.Contains(err.Error(), "pg_drop_replication_slot('lost')") {
		t.Errorf("lost slot: %v", err)
	}
}
