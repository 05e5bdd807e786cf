package pgtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
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
