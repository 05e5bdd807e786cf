package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfeed/pgfeed/internal/pgtemp"
	"github.com/pgfeed/pgfeed/internal/pgtest"
)

// TestTriggersLogical: with source: logical in the configuration, the
// triggers commands manage the publication, with the same shape of output
// and refusals as with triggers.
func TestTriggersLogical(t *testing.T) {
	cleanEnv(t)
	ctx := context.Background()
	url := pgtest.NewDB(t)
	conn := pgtest.Connect(t, url)
	if _, err := conn.Exec(ctx, `CREATE TABLE public.orders (id bigint PRIMARY KEY, status text); CREATE TABLE nokey (a int)`); err != nil {
		t.Fatal(err)
	}
	cfg := writeFile(t, "pgfeed.yaml", "source: logical\nlogical:\n  publication: app_feed\n")
	args := func(a ...string) []string { return append(a, "--config", cfg, "--database-url", url) }

	r := pgfeed(t, args("triggers", "enable", "orders")...)
	r.wantCode(t, 0)
	if strings.TrimSpace(r.stdout) != "capture enabled on public.orders" {
		t.Errorf("enable:\n%s", r.stdout)
	}
	var members int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_publication_tables WHERE pubname = 'app_feed' AND tablename = 'orders'`).Scan(&members); err != nil || members != 1 {
		t.Fatalf("orders in publication app_feed: %d %v", members, err)
	}
	r = pgfeed(t, args("triggers", "list")...)
	r.wantCode(t, 0)
	if lines := strings.Split(strings.TrimSpace(r.stdout), "\n"); len(lines) != 2 || strings.Join(strings.Fields(lines[1]), " ") != "public.orders logical enabled id" {
		t.Errorf("list:\n%s", r.stdout)
	}
	pgfeed(t, args("triggers", "enable", "orders", "--replica-identity-full")...).wantCode(t, 0)
	r = pgfeed(t, args("triggers", "list")...)
	if !strings.Contains(r.stdout, "enabled:identity-full") {
		t.Errorf("list after --replica-identity-full:\n%s", r.stdout)
	}

	dir := t.TempDir()
	r = pgfeed(t, args("triggers", "generate", "orders", "--dir", dir)...)
	r.wantCode(t, 0)
	text, err := os.ReadFile(strings.TrimSpace(r.stdout))
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"-- +goose Up", `ALTER PUBLICATION "app_feed" ADD TABLE "public"."orders"`, `DROP TABLE "public"."orders"`} {
		if !strings.Contains(string(text), w) {
			t.Errorf("generated migration lacks %q:\n%s", w, text)
		}
	}

	r = pgfeed(t, args("triggers", "enable", "nokey")...)
	r.wantCode(t, 1)
	if !strings.Contains(r.stderr, "has no primary key") {
		t.Errorf("enable nokey: %q", r.stderr)
	}
	r = pgfeed(t, "triggers", "enable", "orders", "--replica-identity-full", "--database-url", url)
	r.wantCode(t, 2)
	if !strings.Contains(r.stderr, "source: logical only") {
		t.Errorf("--replica-identity-full with triggers: %q", r.stderr)
	}

	r = pgfeed(t, args("triggers", "disable", "orders")...)
	r.wantCode(t, 0)
	r = pgfeed(t, args("triggers", "list")...)
	if strings.TrimSpace(r.stdout) != "no table is captured" {
		t.Errorf("list after disable:\n%s", r.stdout)
	}
}

// TestServeLogical runs pgfeed serve with source: logical: the slot and
// publication are created, a change arrives over SSE with a cursor of the
// WAL, /readyz and /metrics report the stream and the slot, and SIGTERM
// exits 0.
func TestServeLogical(t *testing.T) {
	cleanEnv(t)
	ctx := context.Background()
	url := pgtest.NewDB(t)
	slot := pgtest.Slot(t, url)
	conn := pgtest.Connect(t, url)
	if _, err := conn.Exec(ctx, `CREATE TABLE orders (id int PRIMARY KEY, status text)`); err != nil {
		t.Fatal(err)
	}
	cfg := writeFile(t, "pgfeed.yaml", "source: logical\nlogical:\n  slot: "+slot+"\nauth:\n  anonymous: true\npolicies:\n  - table: public.orders\n    roles: [anon]\n")
	pgfeed(t, "triggers", "enable", "orders", "--config", cfg, "--database-url", url).wantCode(t, 0)

	addr, stop := startServe(t, cfg, url)

	resp, err := http.Get("http://" + addr + "/v1/sse/public.orders")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() && !strings.HasPrefix(sc.Text(), "id: ") { // subscribed
	}
	if _, err := conn.Exec(ctx, `INSERT INTO orders VALUES (1, 'open')`); err != nil {
		t.Fatal(err)
	}
	var ev map[string]any
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			if err := json.Unmarshal([]byte(data), &ev); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	if ev["op"] != "insert" || ev["new"].(map[string]any)["status"] != "open" {
		t.Fatalf("change: %v", ev)
	}
	if r, err := http.Get("http://" + addr + "/readyz"); err != nil || r.StatusCode != 200 {
		t.Errorf("readyz: %v %v", r, err)
	}
	r, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if !regexp.MustCompile(`(?m)^pgfeed_slot_retained_wal_bytes \d+$`).Match(body) {
		t.Errorf("metrics lack the slot's retained WAL:\n%s", body)
	}
	stop()
	// The slot stays, and is let go once the walsender has exited.
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
	for deadline := time.Now().Add(10 * time.Second); ; <-poll.C {
		var exists, active bool
		if err := conn.QueryRow(ctx, `SELECT count(*) = 1, coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&exists, &active); err != nil {
			t.Fatal(err)
		}
		if !exists {
			t.Fatal("the slot was dropped when serve stopped")
		}
		if !active {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the slot is still in use 10 s after serve stopped")
		}
	}
}

// TestServeLogicalRefusals: a server whose wal_level is not logical, and a
// role without REPLICATION, are refused at start with exit 2 and one
// sentence saying what to change. (A slot in use is refused by the same
// path; listener's TestLogicalRefusals shows it without the 10 s wait for a
// walsender that may be exiting.)
func TestServeLogicalRefusals(t *testing.T) {
	cleanEnv(t)
	ctx := context.Background()
	replica, err := pgtemp.Start(ctx, pgtemp.Options{Settings: map[string]string{"wal_level": "replica"}})
	if err != nil {
		t.Fatal(err)
	}
	defer replica.Stop()
	r := pgfeed(t, "serve", "--database-url", replica.URL("postgres"), "--listen", "127.0.0.1:0",
		"--config", writeFile(t, "pgfeed.yaml", "source: logical\n"))
	r.wantCode(t, 2)
	if !strings.Contains(r.stderr, "needs wal_level = logical, and this server has wal_level = replica") {
		t.Errorf("wal_level replica: stderr %q", r.stderr)
	}

	url := pgtest.NewDB(t)
	conn := pgtest.Connect(t, url)
	cfgConn, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	role := "norepl_" + strings.TrimPrefix(cfgConn.Database, "pgfeed_test_")
	if _, err := conn.Exec(ctx, `CREATE ROLE `+role+` LOGIN NOREPLICATION`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = conn.Exec(context.Background(), `DROP ROLE IF EXISTS `+role) })
	roleURL := strings.Replace(url, "postgres@", role+"@", 1)
	r = pgfeed(t, "serve", "--database-url", roleURL, "--listen", "127.0.0.1:0",
		"--config", writeFile(t, "pgfeed.yaml", "source: logical\n"))
	r.wantCode(t, 2)
	if !strings.Contains(r.stderr, "needs a role with the REPLICATION attribute") || !strings.Contains(r.stderr, "ALTER ROLE") {
		t.Errorf("stderr %q", r.stderr)
	}
}
