package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfeed/pgfeed/internal/pgtest"
)

// startDev runs pgfeed dev with args until the test ends, and returns its
// output once it serves.
func startDev(t *testing.T, args ...string) (stdout *syncBuffer, stop func() (int, string)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stdout = newSyncBuffer("press Ctrl-C to stop")
	var stderr bytes.Buffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, append([]string{"dev", "--listen", "127.0.0.1:0"}, args...), stdout, &stderr) }()
	stopped := false
	var code int
	stop = func() (int, string) {
		if !stopped {
			stopped = true
			cancel() // what SIGINT does through main's signal.NotifyContext
			select {
			case code = <-done:
			case <-time.After(time.Minute):
				t.Fatal("dev did not return within a minute of being cancelled")
			}
		}
		return code, stderr.String()
	}
	t.Cleanup(func() { stop() })
	select {
	case <-stdout.seen:
	case code := <-done:
		stopped = true
		t.Fatalf("dev exited with %d before it was ready\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr.String())
	case <-time.After(3 * time.Minute):
		t.Fatalf("dev not ready after 3 minutes\nstdout:\n%s", stdout)
	}
	return stdout, stop
}

// With database.url set, dev prepares that database and serves it.
func TestDevExplicitDatabase(t *testing.T) {
	cleanEnv(t)
	ctx := context.Background()
	url := pgtest.NewDB(t)
	t.Setenv("PGFEED_DATABASE_URL", url)

	stdout, stop := startDev(t)
	out := stdout.String()
	for _, w := range []string{
		"applied migration 00001_changes.sql",
		"created table public.demo_orders",
		"capture enabled on public.demo_orders",
		"inserted 3 demo rows",
		`psql "` + url + `"`,
		"INSERT INTO public.demo_orders",
		"SELECT * FROM pgfeed.changes ORDER BY seq",
		"curl -N 'http://127.0.0.1:",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("dev output lacks %q:\n%s", w, out)
		}
	}
	conn := pgtest.Connect(t, url)
	checkDemo(t, conn)

	// The printed long-poll URL answers with a change made now.
	m := regexp.MustCompile(`curl '(http://[^']+/v1/changes/[^']+)'`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no long-poll URL in:\n%s", out)
	}
	type pollAnswer struct {
		Changes []map[string]any
		Cursor  string
	}
	answer := make(chan pollAnswer, 1)
	go func() {
		resp, err := http.Get(m[1])
		if err != nil {
			t.Error(err)
			answer <- pollAnswer{}
			return
		}
		defer resp.Body.Close()
		var a pollAnswer
		if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
			t.Error(err)
		}
		answer <- a
	}()
	// The poll starts from "now"; keep writing until one reaches it.
	deadline := time.After(time.Minute)
	for got := false; !got; {
		if _, err := conn.Exec(ctx, `INSERT INTO public.demo_orders (customer, total) VALUES ('erin', 1)`); err != nil {
			t.Fatal(err)
		}
		select {
		case a := <-answer:
			if len(a.Changes) == 0 || a.Changes[0]["table"] != "public.demo_orders" || a.Cursor == "" {
				t.Fatalf("long poll answered %+v", a)
			}
			got = true
		case <-deadline:
			t.Fatal("no long-poll answer")
		case <-time.After(200 * time.Millisecond):
		}
	}

	code, stderr := stop()
	if code != 0 {
		t.Fatalf("dev exited with %d, want 0\nstderr:\n%s", code, stderr)
	}
	checkStderr(t, stderr)

	// Running it again changes nothing.
	stdout, stop = startDev(t)
	if out := stdout.String(); !strings.Contains(out, "already exists") || strings.Contains(out, "inserted") {
		t.Errorf("second dev:\n%s", out)
	}
	stop()
}

// checkDemo checks that the demo table has its rows and is captured: an
// insert shows up in pgfeed.changes.
func checkDemo(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	ctx := context.Background()
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM public.demo_orders`).Scan(&n); err != nil || n != 3 {
		t.Fatalf("demo_orders: %d rows, %v; want 3", n, err)
	}
	var before, after int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pgfeed.changes`).Scan(&before); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO public.demo_orders (customer, total) VALUES ('dave', 12.50)`); err != nil {
		t.Fatal(err)
	}
	var newRow string
	err := conn.QueryRow(ctx, `SELECT count(*) OVER (), new->0->>'customer' FROM pgfeed.changes
		WHERE schema_name = 'public' AND table_name = 'demo_orders' AND op = 'insert'
		ORDER BY seq DESC LIMIT 1`).Scan(&after, &newRow)
	if err != nil {
		t.Fatal(err)
	}
	if after != before+1 || newRow != "dave" {
		t.Errorf("after an insert into demo_orders: %d captured inserts (had %d changes), newest for %q; want one more, for dave", after, before, newRow)
	}
}

// Without database.url, dev runs a throwaway PostgreSQL until cancelled,
// then removes it and exits 0.
func TestDevThrowaway(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a PostgreSQL server")
	}
	cleanEnv(t)
	ctx := context.Background()
	stdout, stop := startDev(t)
	out := stdout.String()
	m := regexp.MustCompile(`psql "([^"]+)"`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("dev printed no psql command:\n%s", out)
	}
	url := m[1]
	if !strings.Contains(out, "starting a throwaway PostgreSQL") || !strings.Contains(out, "capture enabled on public.demo_orders") {
		t.Errorf("dev output:\n%s", out)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect to the printed URL %s: %v", url, err)
	}
	checkDemo(t, conn)
	conn.Close(ctx)

	code, stderr := stop()
	if code != 0 {
		t.Fatalf("dev exited with %d after cancel, want 0\nstderr:\n%s", code, stderr)
	}
	checkStderr(t, stderr)
	if !strings.Contains(stdout.String(), "stopped and removed") {
		t.Errorf("dev output after stop:\n%s", stdout)
	}
	cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ccancel()
	if c, err := pgx.Connect(cctx, url); err == nil {
		c.Close(cctx)
		t.Errorf("the throwaway PostgreSQL at %s still accepts connections after dev returned", url)
	}
}

func TestWithoutPassword(t *testing.T) {
	tests := map[string]string{
		"postgres://u:secret@h:5432/db?sslmode=disable": "postgres://u@h:5432/db?sslmode=disable",
		"postgresql://u@h/db":                           "postgresql://u@h/db",
		"postgres://h/db":                               "postgres://h/db",
		"host=h dbname=db":                              "host=h dbname=db",
		"host=h password=secret":                        "<database.url>",
	}
	for in, want := range tests {
		if got := withoutPassword(in); got != want {
			t.Errorf("withoutPassword(%q) = %q, want %q", in, got, want)
		}
	}
}
