package pgtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx", for goose

	"github.com/pgfeed/pgfeed/internal/pgtemp"
	"github.com/pgfeed/pgfeed/migrations"
)

// EnvURL names the variable that points the tests at an existing server.
const EnvURL = "PGFEED_TEST_DATABASE_URL"

var (
	mu       sync.Mutex
	server   *pgtemp.Server // guarded by mu; nil until first needed
	adminURL string         // guarded by mu
)

// Main runs the package's tests and stops the throwaway server afterwards.
// Use it from TestMain: func TestMain(m *testing.M) { pgtest.Main(m) }.
func Main(m *testing.M) {
	code := m.Run()
	mu.Lock()
	if server != nil {
		if err := server.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "pgtest: stop server:", err)
		}
		server = nil
	}
	mu.Unlock()
	os.Exit(code)
}

// Server returns the throwaway server, starting it when needed. It returns
// nil when PGFEED_TEST_DATABASE_URL is set (no server is owned then).
func Server(t testing.TB) *pgtemp.Server {
	t.Helper()
	admin(t)
	mu.Lock()
	defer mu.Unlock()
	return server
}

// admin returns the URL of a database with the right to create databases.
func admin(t testing.TB) string {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if adminURL != "" {
		return adminURL
	}
	if u := os.Getenv(EnvURL); u != "" {
		adminURL = u
		return adminURL
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := pgtemp.Start(ctx, pgtemp.Options{})
	if err != nil {
		t.Fatalf("start throwaway PostgreSQL (or set %s): %v", EnvURL, err)
	}
	server = s
	adminURL = s.URL("postgres")
	return adminURL
}

// NewDB creates a fresh database for this test, dropped at its end, and
// returns its connection URL.
func NewDB(t testing.TB) string {
	t.Helper()
	base := admin(t)
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "pgfeed_test_" + hex.EncodeToString(b[:])

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("connect to test server: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Errorf("drop test database %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("drop test database %s: %v", name, err)
		}
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("parse %s: %v", EnvURL, err)
	}
	u.Path = "/" + name
	return u.String()
}

// Connect opens a connection to url, closed when the test ends.
func Connect(t testing.TB, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// NewMigratedDB is NewDB with pgfeed's own schema installed.
func NewMigratedDB(t testing.TB) string {
	t.Helper()
	url := NewDB(t)
	db, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatalf("open %s: %v", url, err)
	}
	defer db.Close()
	if _, err := migrations.Up(context.Background(), db); err != nil {
		t.Fatalf("migrate test database: %v", err)
	}
	return url
}

// Slot returns a replication slot name unique to this test (slot names
// are global to the server) and drops the slot, if one was made, when the
// test ends: a forgotten slot would keep WAL, and would stop its database
// from being dropped. Call it after the test's database is made, so that
// the slot goes first. Whatever streams from the slot must stop before:
// cleanups run last-registered first, so register its stop after calling
// Slot (or stop it before the test returns).
func Slot(t testing.TB, url string) string {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "pgfeed_test_" + hex.EncodeToString(b[:])
	t.Cleanup(func() { DropSlot(t, url, name) })
	return name
}

// DropSlot drops slot name if it exists, waiting (up to 30 s) for the
// process streaming from it to let it go.
func DropSlot(t testing.TB, url, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Errorf("drop slot %s: %v", name, err)
		return
	}
	defer conn.Close(context.Background())
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		var exists, active bool
		err := conn.QueryRow(ctx, `SELECT count(*) > 0, coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = $1`, name).Scan(&exists, &active)
		if err != nil {
			t.Errorf("drop slot %s: %v", name, err)
			return
		}
		if !exists {
			return
		}
		if !active {
			_, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, name)
			if err == nil {
				return
			}
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "55006" { // 55006: taken again meanwhile
				t.Errorf("drop slot %s: %v", name, err)
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Errorf("drop slot %s: still in use after 30 s", name)
			return
		case <-tick.C:
		}
	}
}
