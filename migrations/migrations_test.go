package migrations_test

import (
	"context"
	"database/sql"
	"strings"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/pgfeed/pgfeed/internal/pgtest"
	"github.com/pgfeed/pgfeed/migrations"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func openDB(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", pgtest.NewDB(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func exists(t *testing.T, db *sql.DB, regclass string) bool {
	t.Helper()
	var ok bool
	if err := db.QueryRow("SELECT to_regclass($1) IS NOT NULL", regclass).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}

func TestUpUpDownUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openDB(t)

	// The application's own goose history must be left alone.
	if _, err := db.Exec(`CREATE TABLE public.goose_db_version (id int PRIMARY KEY, version_id bigint, is_applied bool);
		INSERT INTO public.goose_db_version VALUES (1, 20240101000000, true)`); err != nil {
		t.Fatal(err)
	}

	st, err := migrations.Status(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) == 0 || st[0].Applied {
		t.Fatalf("status before up = %+v, want pending migrations", st)
	}

	applied, err := migrations.Up(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if len(applied) != len(st) {
		t.Fatalf("up applied %d migrations, want %d", len(applied), len(st))
	}
	for _, name := range []string{"pgfeed.changes", "pgfeed.listeners", "pgfeed.goose_db_version"} {
		if !exists(t, db, name) {
			t.Errorf("%s missing after up", name)
		}
	}

	again, err := migrations.Up(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != 0 {
		t.Fatalf("second up applied %v, want nothing", again)
	}
	if n, err := migrations.Pending(ctx, db); err != nil || n != 0 {
		t.Fatalf("pending after up = %d, %v", n, err)
	}
	st, err = migrations.Status(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range st {
		if !m.Applied || m.AppliedAt.IsZero() || !strings.HasSuffix(m.Name, ".sql") {
			t.Errorf("status after up: %+v", m)
		}
	}

	// Roll everything back, one migration at a time.
	for range st {
		r, err := migrations.Down(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		if r == nil {
			t.Fatal("down rolled back nothing while migrations were applied")
		}
	}
	if r, err := migrations.Down(ctx, db); err != nil || r != nil {
		t.Fatalf("down with nothing applied = %v, %v; want nil, nil", r, err)
	}
	if exists(t, db, "pgfeed.changes") {
		t.Error("pgfeed.changes still exists after down")
	}

	if _, err := migrations.Up(ctx, db); err != nil {
		t.Fatal(err)
	}
	if !exists(t, db, "pgfeed.changes") {
		t.Error("pgfeed.changes missing after down then up")
	}

	var appVersions int
	if err := db.QueryRow("SELECT count(*) FROM public.goose_db_version").Scan(&appVersions); err != nil {
		t.Fatal(err)
	}
	if appVersions != 1 {
		t.Errorf("application's goose table has %d rows, want its 1 untouched", appVersions)
	}
}

// TestDownRefusedWhileCaptured checks that rolling back never drops an
// application's triggers, nor the ticks its cursors name, while a table is
// captured.
func TestDownRefusedWhileCaptured(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openDB(t)
	if _, err := migrations.Up(ctx, db); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE orders (id int PRIMARY KEY);
		CREATE TRIGGER pgfeed_capture_truncate AFTER TRUNCATE ON orders FOR EACH STATEMENT EXECUTE FUNCTION pgfeed.capture_truncate()`); err != nil {
		t.Fatal(err)
	}
	var err error
	for err == nil {
		var r *migrations.Result
		r, err = migrations.Down(ctx, db)
		if err == nil && r == nil {
			t.Fatal("all migrations rolled back while a table was still captured")
		}
	}
	if !strings.Contains(err.Error(), "pgfeed capture is still enabled on orders") {
		t.Fatalf("down error = %v, want it to name the captured table", err)
	}
	var n int
	if err := db.QueryRow("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'orders'::regclass").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("orders has %d triggers after the refused down, want 1", n)
	}
	// The ticks, which the cursors name, are refused too.
	var ticks bool
	if err := db.QueryRow("SELECT to_regclass('pgfeed.ticks') IS NOT NULL").Scan(&ticks); err != nil {
		t.Fatal(err)
	}
	if !ticks {
		t.Error("pgfeed.ticks was dropped while a table was captured")
	}
}

// TestConcurrentUp checks that nodes starting together migrate once.
func TestConcurrentUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openDB(t)
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			_, err := migrations.Up(ctx, db)
			errs <- err
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if !exists(t, db, "pgfeed.changes") {
		t.Error("pgfeed.changes missing")
	}
}

// TestChunkedLogRollsBack checks that rolling back 00004 turns the chunks of
// the change log back into one row per change, with its key, and that
// migrating up again keeps them.
func TestChunkedLogRollsBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openDB(t)
	if _, err := migrations.Up(ctx, db); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE t (a int, b text, v float8, PRIMARY KEY (a, b));
		CREATE TRIGGER i AFTER INSERT ON t REFERENCING NEW TABLE AS pgfeed_new_rows FOR EACH STATEMENT EXECUTE FUNCTION pgfeed.capture_insert('a', 'b');
		CREATE TRIGGER u AFTER UPDATE ON t FOR EACH ROW EXECUTE FUNCTION pgfeed.capture_row('a', 'b');
		INSERT INTO t SELECT g, 'x', g * 1e20 FROM generate_series(1, 3) g;
		UPDATE t SET v = 0 WHERE a = 2;
		DROP TABLE t`); err != nil {
		t.Fatal(err)
	}
	const want = `insert {"a": 1, "b": "x"} {"a": 1, "b": "x", "v": 100000000000000000000} ` +
		`insert {"a": 2, "b": "x"} {"a": 2, "b": "x", "v": 200000000000000000000} ` +
		`insert {"a": 3, "b": "x"} {"a": 3, "b": "x", "v": 300000000000000000000} ` +
		`update {"a": 2, "b": "x"} {"a": 2, "b": "x", "v": 0} `
	for { // down to before 00004
		r, err := migrations.Down(ctx, db)
		if err != nil || r == nil {
			t.Fatalf("down = %+v, %v; want 00004 rolled back", r, err)
		}
		if strings.HasPrefix(r.Name, "00004") {
			break
		}
	}
	var got string
	if err := db.QueryRow(`SELECT string_agg(op || ' ' || key::text || ' ' || new::text || ' ', '' ORDER BY seq, new->>'a')
		FROM pgfeed.changes`).Scan(&got); err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("log after down:\n got  %s\n want %s", got, want)
	}
	if _, err := migrations.Up(ctx, db); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(`SELECT string_agg(op || ' ' || array_to_string(key_columns, ',') || ' ' || new::text, ';' ORDER BY seq)
		FROM pgfeed.changes`).Scan(&got); err != nil {
		t.Fatal(err)
	}
	if want := `insert a,b {"a": 1, "b": "x", "v": 100000000000000000000};insert a,b {"a": 2, "b": "x", "v": 200000000000000000000};` +
		`insert a,b {"a": 3, "b": "x", "v": 300000000000000000000};update a,b {"a": 2, "b": "x", "v": 0}`; got != want {
		t.Errorf("log after down and up:\n got  %s\n want %s", got, want)
	}
}
