package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgfeed/pgfeed/internal/pgtest"
)

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		r := pgfeed(t, args...)
		r.wantCode(t, 0)
		if r.stdout != "pgfeed "+version+"\n" {
			t.Errorf("%q printed %q, want %q", args, r.stdout, "pgfeed "+version+"\n")
		}
	}
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{}, "missing command"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"migrat"}, `did you mean "migrate"`},
		{[]string{"migrate"}, `missing command after "pgfeed migrate"`},
		{[]string{"migrate", "sideways"}, `unknown command "sideways" for "pgfeed migrate"`},
		{[]string{"migrate", "up", "extra"}, "takes no arguments"},
		{[]string{"triggers", "lst"}, `did you mean "list"`},
		{[]string{"triggers", "enable"}, "needs at least one table"},
		{[]string{"triggers", "disable"}, "needs at least one table"},
		{[]string{"triggers", "generate", "public.orders"}, `"dir" not set`},
		{[]string{"migrate", "up", "--no-such-flag"}, "unknown flag: --no-such-flag"},
		{[]string{"--no-such-flag"}, "unknown flag: --no-such-flag"},
		{[]string{"version", "--database-url"}, "flag needs an argument"},
		{[]string{"bench", "latency", "--centrifugo", "/nonexistent/centrifugo"}, `--centrifugo "/nonexistent/centrifugo": not an executable file`},
		{[]string{"bench", "fanout", "--centrifugo", "/bin/true", "--set", "source=logical"}, "--set and --server, which configure the pgfeed server, do not apply"},
	}
	for _, tt := range tests {
		r := pgfeed(t, tt.args...)
		r.wantCode(t, 2)
		if !strings.Contains(r.stderr, tt.want) {
			t.Errorf("%q: stderr %q does not contain %q", tt.args, r.stderr, tt.want)
		}
	}
}

// TestBenchNeedsAName: pgfeed bench alone is a usage error naming the
// benches.
func TestBenchNeedsAName(t *testing.T) {
	r := pgfeed(t, "bench")
	r.wantCode(t, 2)
	for _, name := range []string{"latency", "fanout", "idle"} {
		if !strings.Contains(r.stderr, name) {
			t.Errorf("stderr %q does not name %s", r.stderr, name)
		}
	}
}

func TestDatabaseUnreachable(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"migrate", "up"}, {"triggers", "list"}, {"serve"}} {
		r := pgfeed(t, append(args, "--database-url", "postgres://127.0.0.1:1/nothing?connect_timeout=5")...)
		r.wantCode(t, 1)
		if !strings.HasPrefix(r.stderr, "pgfeed: connect to database: ") {
			t.Errorf("%q: stderr %q", args, r.stderr)
		}
	}
}

func TestMigrate(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDB(t)
	db := []string{"--database-url", url}

	r := pgfeed(t, append([]string{"migrate", "status"}, db...)...)
	r.wantCode(t, 0)
	if !strings.Contains(r.stdout, "VERSION") || !strings.Contains(r.stdout, "00001_changes.sql") || !strings.Contains(r.stdout, "pending") {
		t.Errorf("status before up:\n%s", r.stdout)
	}

	r = pgfeed(t, append([]string{"migrate", "up"}, db...)...)
	r.wantCode(t, 0)
	if !strings.Contains(r.stdout, "applied 00001_changes.sql (version 1)") {
		t.Errorf("up:\n%s", r.stdout)
	}
	conn := pgtest.Connect(t, url)
	var exists bool
	if err := conn.QueryRow(context.Background(), `SELECT to_regclass('pgfeed.changes') IS NOT NULL`).Scan(&exists); err != nil || !exists {
		t.Fatalf("pgfeed.changes after migrate up: exists=%v err=%v", exists, err)
	}

	r = pgfeed(t, append([]string{"migrate", "up"}, db...)...)
	r.wantCode(t, 0)
	if strings.TrimSpace(r.stdout) != "pgfeed schema is up to date" {
		t.Errorf("second up:\n%s", r.stdout)
	}

	r = pgfeed(t, append([]string{"migrate", "status"}, db...)...)
	r.wantCode(t, 0)
	if !strings.Contains(r.stdout, "00001_changes.sql") || strings.Contains(r.stdout, "pending") || !strings.Contains(r.stdout, "UTC") {
		t.Errorf("status after up:\n%s", r.stdout)
	}

	// Down rolls back one migration at a time, newest first, down to 00001.
	var downs []string
	for {
		r = pgfeed(t, append([]string{"migrate", "down"}, db...)...)
		r.wantCode(t, 0)
		out := strings.TrimSpace(r.stdout)
		if out == "nothing to roll back" {
			break
		}
		if !strings.HasPrefix(out, "rolled back ") || len(downs) > 100 {
			t.Fatalf("down:\n%s", r.stdout)
		}
		downs = append(downs, out)
	}
	if len(downs) == 0 || !strings.HasPrefix(downs[len(downs)-1], "rolled back 00001_changes.sql (version 1)") {
		t.Errorf("downs: %q, want the last to roll back 00001_changes.sql", downs)
	}
	if err := conn.QueryRow(context.Background(), `SELECT to_regclass('pgfeed.changes') IS NOT NULL`).Scan(&exists); err != nil || exists {
		t.Fatalf("pgfeed.changes after migrating all the way down: exists=%v err=%v", exists, err)
	}
	r = pgfeed(t, append([]string{"migrate", "status"}, db...)...)
	r.wantCode(t, 0)
	if !strings.Contains(r.stdout, "pending") {
		t.Errorf("status after down:\n%s", r.stdout)
	}
}

func TestTriggers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewDB(t)
	db := []string{"--database-url", url}
	conn := pgtest.Connect(t, url)
	if _, err := conn.Exec(ctx, `CREATE TABLE public.orders (id bigint PRIMARY KEY, status text NOT NULL)`); err != nil {
		t.Fatal(err)
	}

	// Before pgfeed's schema is installed, capture is refused.
	r := pgfeed(t, append([]string{"triggers", "enable", "orders"}, db...)...)
	r.wantCode(t, 1)
	if !strings.Contains(r.stderr, `run "pgfeed migrate up" first`) {
		t.Errorf("enable before migrate: stderr %q", r.stderr)
	}

	pgfeed(t, append([]string{"migrate", "up"}, db...)...).wantCode(t, 0)

	r = pgfeed(t, append([]string{"triggers", "list"}, db...)...)
	r.wantCode(t, 0)
	if strings.TrimSpace(r.stdout) != "no table is captured" {
		t.Errorf("list before enable:\n%s", r.stdout)
	}

	r = pgfeed(t, append([]string{"triggers", "enable", "orders"}, db...)...)
	r.wantCode(t, 0)
	if strings.TrimSpace(r.stdout) != "capture enabled on public.orders" {
		t.Errorf("enable:\n%s", r.stdout)
	}

	r = pgfeed(t, append([]string{"triggers", "list"}, db...)...)
	r.wantCode(t, 0)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "TABLE SOURCE STATE KEY" ||
		strings.Join(strings.Fields(lines[1]), " ") != "public.orders trigger enabled id" {
		t.Errorf("list after enable:\n%s", r.stdout)
	}

	// Capture really is on.
	if _, err := conn.Exec(ctx, `INSERT INTO orders VALUES (1, 'open')`); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pgfeed.changes WHERE table_name = 'orders' AND op = 'insert'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("captured inserts: %d, %v; want 1", n, err)
	}

	dir := t.TempDir()
	r = pgfeed(t, append([]string{"triggers", "generate", "public.orders", "--dir", dir}, db...)...)
	r.wantCode(t, 0)
	path := strings.TrimSpace(r.stdout)
	if filepath.Dir(path) != dir || !strings.HasSuffix(path, ".sql") {
		t.Fatalf("generate printed %q, want a .sql file in %s", path, dir)
	}
	sql, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"-- +goose Up", "-- +goose Down", "pgfeed_capture_insert", "generated by pgfeed " + version} {
		if !strings.Contains(string(sql), w) {
			t.Errorf("generated migration lacks %q:\n%s", w, sql)
		}
	}

	r = pgfeed(t, append([]string{"triggers", "generate", "orders", "--dir", filepath.Join(dir, "missing")}, db...)...)
	r.wantCode(t, 1)
	if !strings.Contains(r.stderr, "missing") {
		t.Errorf("generate into a missing directory: stderr %q", r.stderr)
	}

	r = pgfeed(t, append([]string{"triggers", "disable", "orders"}, db...)...)
	r.wantCode(t, 0)
	if strings.TrimSpace(r.stdout) != "capture disabled on public.orders" {
		t.Errorf("disable:\n%s", r.stdout)
	}
	r = pgfeed(t, append([]string{"triggers", "list"}, db...)...)
	r.wantCode(t, 0)
	if strings.TrimSpace(r.stdout) != "no table is captured" {
		t.Errorf("list after disable:\n%s", r.stdout)
	}

	// A refused table: exit 1 and the refusal sentence as it is, naming the table.
	for _, cmd := range []string{"enable", "disable", "generate"} {
		args := append([]string{"triggers", cmd, "orders", "public.no_such_table", "--dir", dir}, db...)
		if cmd != "generate" {
			args = append([]string{"triggers", cmd, "orders", "public.no_such_table"}, db...)
		}
		r = pgfeed(t, args...)
		r.wantCode(t, 1)
		if !strings.HasPrefix(r.stderr, `pgfeed: table "public.no_such_table" does not exist`) {
			t.Errorf("%s of a missing table: stderr %q", cmd, r.stderr)
		}
	}
	// All or none: orders was not captured by the refused enable.
	r = pgfeed(t, append([]string{"triggers", "list"}, db...)...)
	if strings.TrimSpace(r.stdout) != "no table is captured" {
		t.Errorf("list after a refused enable:\n%s", r.stdout)
	}
}

func TestOneLine(t *testing.T) {
	tests := map[string]string{
		"plain":                        "plain",
		"failed to connect:\n\thost a": "failed to connect: host a",
		"a\nb\r\n\nc  ":                "a; b; c",
	}
	for in, want := range tests {
		if got := oneLine(in); got != want {
			t.Errorf("oneLine(%q) = %q, want %q", in, got, want)
		}
	}
}
