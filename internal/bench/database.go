package bench

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/pgfeed/pgfeed/internal/pgtemp"
	"github.com/pgfeed/pgfeed/migrations"
	"github.com/pgfeed/pgfeed/triggers"
)

// database is the PostgreSQL a run uses: a throwaway server it owns, or an
// existing database.
type database struct {
	url        string
	temp       *pgtemp.Server // nil for an existing database
	version    string         // server_version
	capture    capture
	centrifugo bool // the bench table feeds Centrifugo's outbox instead
}

// capture is how the bench table is captured: by triggers, or by the
// publication of the logical source, as the server's settings choose.
type capture struct {
	logical     bool
	publication string // logical.publication; "" = the default
	slot        string // logical.slot, the default filled in
}

// captureFor reads the source from the server's settings (PGFEED_*
// variables), the last one of a key winning as in the environment.
func captureFor(settings []string) (c capture) {
	for _, kv := range settings {
		key, value, _ := strings.Cut(kv, "=")
		switch key {
		case "PGFEED_SOURCE":
			c.logical = value == "logical"
		case "PGFEED_LOGICAL_PUBLICATION":
			c.publication = value
		case "PGFEED_LOGICAL_SLOT":
			c.slot = value
		}
	}
	if c.slot == "" {
		c.slot = "pgfeed"
	}
	return c
}

// openDatabase starts a throwaway server when url is empty, then installs
// pgfeed's schema and a fresh, captured bench table.
func openDatabase(ctx context.Context, url string, o *Options) (_ *database, err error) {
	d := &database{url: url, capture: captureFor(o.Settings), centrifugo: o.Centrifugo != ""}
	if url == "" {
		o.logf("starting a throwaway PostgreSQL")
		// Commits wait for their WAL to be written, as on a production
		// server: the walsender only sends written WAL, so with the test
		// servers' synchronous_commit = off the logical source would see
		// changes only when the WAL writer wakes (every 200 ms). fsync
		// stays off.
		d.temp, err = pgtemp.Start(ctx, pgtemp.Options{Settings: map[string]string{"synchronous_commit": "on"}})
		if err != nil {
			return nil, fmt.Errorf("start a throwaway PostgreSQL (or give a database URL): %w", err)
		}
		d.url = d.temp.URL("postgres")
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, d.close())
		}
	}()
	if err := d.prepare(ctx); err != nil {
		return nil, err
	}
	return d, nil
}

func (d *database) prepare(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cfg, err := pgx.ParseConfig(d.url)
	if err != nil {
		return fmt.Errorf("database URL: %w", err)
	}
	db := stdlib.OpenDB(*cfg)
	_, err = migrations.Up(ctx, db)
	db.Close()
	if err != nil {
		return err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect to database: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := conn.QueryRow(ctx, "SHOW server_version").Scan(&d.version); err != nil {
		return fmt.Errorf("read the server version: %w", err)
	}
	for _, stmt := range []string{
		"DROP TABLE IF EXISTS " + Table,
		"CREATE TABLE " + Table + " (id bigint PRIMARY KEY, payload text, created_at timestamptz DEFAULT now())",
	} {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("create %s: %w", Table, err)
		}
	}
	switch {
	case d.centrifugo:
		err = prepareCentrifugo(ctx, conn)
	case d.capture.logical:
		_, err = triggers.EnableLogical(ctx, conn, triggers.Publication{Name: d.capture.publication}, Table)
	default:
		_, err = triggers.Enable(ctx, conn, Table)
	}
	if err != nil {
		return fmt.Errorf("capture %s: %w", Table, err)
	}
	return nil
}

// close drops the bench table of an existing database, and the logical
// source's slot, which would hold back WAL for good; or it stops and removes
// the throwaway server.
func (d *database) close() error {
	if d.temp != nil {
		if err := d.temp.Stop(); err != nil {
			return fmt.Errorf("stop the throwaway PostgreSQL: %w", err)
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, d.url)
	if err != nil {
		return fmt.Errorf("drop %s: %w", Table, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP TABLE IF EXISTS "+Table); err != nil {
		return fmt.Errorf("drop %s: %w", Table, err)
	}
	if d.centrifugo {
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+centrifugoSchema+" CASCADE"); err != nil {
			return fmt.Errorf("drop schema %s: %w", centrifugoSchema, err)
		}
	}
	if d.capture.logical {
		if _, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active", d.capture.slot); err != nil {
			return fmt.Errorf("drop replication slot %q: %w", d.capture.slot, err)
		}
	}
	return nil
}
