package triggers_test

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pressly/goose/v3"

	"github.com/pgfeed/pgfeed/internal/pgtest"
	"github.com/pgfeed/pgfeed/triggers"
)

// TestLogicalEnableDisableList: in logical mode capture is publication
// membership, with the same refusals; enabling twice changes nothing;
// REPLICA IDENTITY FULL on request; list shows source and state.
func TestLogicalEnableDisableList(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// pgfeed's own schema is not needed in logical mode.
	conn := pgtest.Connect(t, pgtest.NewDB(t))
	exec(t, conn, `CREATE SCHEMA shop; CREATE TABLE shop.orders (id int PRIMARY KEY); CREATE TABLE users (uid text PRIMARY KEY);
		CREATE TABLE nokey (a int); CREATE VIEW aview AS SELECT 1 AS id; CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY);
		CREATE TABLE noident (id int PRIMARY KEY); ALTER TABLE noident REPLICA IDENTITY NOTHING`)
	pub := triggers.Publication{Name: "feed pub"}
	for name, want := range map[string]string{
		"missing": `table "missing" does not exist`,
		"nokey":   "has no primary key",
		"aview":   "is a view",
		"scratch": "table public.scratch is unlogged: its changes are not written to the WAL",
		"noident": "table public.noident has REPLICA IDENTITY NOTHING: once it is published, PostgreSQL refuses its updates and deletes",
	} {
		_, err := triggers.EnableLogical(ctx, conn, pub, "users", name)
		if !errors.Is(err, triggers.ErrRefused) || !strings.Contains(err.Error(), want) {
			t.Errorf("enable %s: %v, want a refusal containing %q", name, err, want)
		}
	}
	if l, err := triggers.ListLogical(ctx, conn, pub); err != nil || len(l) != 0 {
		t.Fatalf("after refusals: %v %v", l, err)
	}
	for range 2 {
		if _, err := triggers.EnableLogical(ctx, conn, pub, "shop.orders", "users"); err != nil {
			t.Fatal(err)
		}
	}
	full := pub
	full.ReplicaIdentityFull = true
	if _, err := triggers.EnableLogical(ctx, conn, full, "users", "noident"); err != nil { // FULL is set in the same transaction
		t.Fatal(err)
	}
	list, err := triggers.ListLogical(ctx, conn, pub)
	if err != nil {
		t.Fatal(err)
	}
	got := []string{}
	for _, c := range list {
		got = append(got, c.String()+" "+c.Source+" "+c.State+" "+strings.Join(c.Key, ","))
	}
	mustEqual(t, "list", got, []string{"public.noident logical enabled:identity-full id", "public.users logical enabled:identity-full uid", "shop.orders logical enabled id"})

	// The logical catalog serves published tables only.
	cat := triggers.NewPublicationCatalog(conn, pub.Name, time.Millisecond)
	if _, err := cat.Table(ctx, "shop.orders"); err != nil {
		t.Errorf("catalog: %v", err)
	}
	if _, err := triggers.DisableLogical(ctx, conn, pub, "shop.orders", "shop.orders"); err != nil {
		t.Fatal(err)
	}
	if _, err := triggers.DisableLogical(ctx, conn, pub, "shop.orders"); err != nil {
		t.Fatalf("disable twice: %v", err)
	}
	// The catalog's cache lasts a millisecond: poll until it has seen
	// the change.
	poll := time.NewTicker(time.Millisecond)
	defer poll.Stop()
	deadline := time.Now().Add(5 * time.Second)
	for ; ; <-poll.C {
		_, err := cat.Table(ctx, "shop.orders")
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("disabled table still in the catalog")
		}
	}
	list, _ = triggers.ListLogical(ctx, conn, pub)
	if len(list) != 2 || list[1].Name != "users" {
		t.Errorf("after disable: %v", list)
	}
}

// TestLogicalGeneratedMigrationEqualsEnable: goose applying the generated
// migration gives the publication and identities EnableLogical gives, and
// Down removes the tables.
func TestLogicalGeneratedMigrationEqualsEnable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const schema = `CREATE TABLE orders (id bigint PRIMARY KEY, status text);
		CREATE TABLE lines (order_id bigint, n int, PRIMARY KEY (order_id, n))`
	tables := []string{"orders", "public.lines"}
	pub := triggers.Publication{ReplicaIdentityFull: true}

	viaEnable := pgtest.Connect(t, pgtest.NewDB(t))
	exec(t, viaEnable, schema)
	if _, err := triggers.EnableLogical(ctx, viaEnable, pub, tables...); err != nil {
		t.Fatal(err)
	}
	gooseURL := pgtest.NewDB(t)
	viaGoose := pgtest.Connect(t, gooseURL)
	exec(t, viaGoose, schema)
	dir := t.TempDir()
	path, err := triggers.GenerateLogical(ctx, viaGoose, pub, dir, tables, "pgfeed test", time.Date(2026, 11, 27, 14, 5, 41, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	text, _ := os.ReadFile(path)
	if !strings.Contains(string(text), "-- +goose StatementBegin") || !strings.Contains(string(text), "REPLICA IDENTITY FULL") {
		t.Fatalf("migration:\n%s", text)
	}
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
	l1, _ := triggers.ListLogical(ctx, viaEnable, pub)
	l2, _ := triggers.ListLogical(ctx, viaGoose, pub)
	if len(l1) != 2 {
		t.Fatalf("enable published %v", l1)
	}
	mustEqual(t, "list", l2, l1)
	if _, err := p.Down(ctx); err != nil {
		t.Fatal(err)
	}
	if l, _ := triggers.ListLogical(ctx, viaGoose, pub); len(l) != 0 {
		t.Errorf("after Down: %v", l)
	}
}
