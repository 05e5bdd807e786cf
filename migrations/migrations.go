package migrations

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"time"

	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

// Schema is the PostgreSQL schema that holds every pgfeed object.
const Schema = "pgfeed"

// VersionTable records which of pgfeed's migrations are applied.
const VersionTable = Schema + ".goose_db_version"

// lockID is the advisory lock that serializes pgfeed's migrations ("pgfeed"
// in ASCII); goose's default ID is left to the application.
const lockID int64 = 0x706766656564

//go:embed sql/*.sql
var embedded embed.FS

// Migration is one of pgfeed's migrations and whether it is applied.
type Migration struct {
	Version   int64
	Name      string // file name, e.g. 00001_changes.sql
	Applied   bool
	AppliedAt time.Time // zero when not applied
}

// Result says what Up or Down did to one migration.
type Result struct {
	Version  int64
	Name     string
	Duration time.Duration
}

func newProvider(db *sql.DB) (*goose.Provider, error) {
	sub, err := fs.Sub(embedded, "sql")
	if err != nil {
		return nil, fmt.Errorf("open embedded migrations: %w", err)
	}
	locker, err := lock.NewPostgresSessionLocker(
		// Our own lock, so pgfeed and the application's goose never wait
		// for each other; retried every second for up to five minutes.
		lock.WithLockID(lockID),
		lock.WithLockTimeout(1, 300),
	)
	if err != nil {
		return nil, fmt.Errorf("create migration lock: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, sub,
		goose.WithTableName(VersionTable),
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
		goose.WithSlog(slog.New(slog.DiscardHandler)),
	)
	if err != nil {
		return nil, fmt.Errorf("prepare migrations: %w", err)
	}
	return p, nil
}

// ensureSchema creates the pgfeed schema, which must exist before goose can
// create its version table inside it. CREATE SCHEMA IF NOT EXISTS is not
// safe against itself running concurrently (two nodes starting at once), so
// it runs under pgfeed's migration lock, unless the schema exists: a
// transaction that waits for that lock while another node's goose builds an
// index CONCURRENTLY (which waits for older snapshots) under it would
// deadlock, and a node whose goose runs has created the schema already.
func ensureSchema(ctx context.Context, db *sql.DB) error {
	var exists bool
	if err := db.QueryRowContext(ctx, "SELECT to_regnamespace($1) IS NOT NULL", Schema).Scan(&exists); err != nil {
		return fmt.Errorf("look for schema %s: %w", Schema, err)
	}
	if exists {
		return nil
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("create schema %s: %w", Schema, err)
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock($1)", lockID); err != nil {
		return fmt.Errorf("create schema %s: %w", Schema, err)
	}
	if _, err := tx.ExecContext(ctx, "CREATE SCHEMA IF NOT EXISTS "+Schema); err != nil {
		return fmt.Errorf("create schema %s: %w", Schema, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("create schema %s: %w", Schema, err)
	}
	return nil
}

// Up applies every pending migration and returns those it applied (none when
// the schema is current).
func Up(ctx context.Context, db *sql.DB) ([]Result, error) {
	if err := ensureSchema(ctx, db); err != nil {
		return nil, err
	}
	p, err := newProvider(db)
	if err != nil {
		return nil, err
	}
	res, err := p.Up(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate up: %w", cause(err))
	}
	out := make([]Result, 0, len(res))
	for _, r := range res {
		out = append(out, Result{Version: r.Source.Version, Name: path.Base(r.Source.Path), Duration: r.Duration})
	}
	return out, nil
}

// Down rolls back the newest applied migration. It returns nil, nil when
// nothing is applied.
func Down(ctx context.Context, db *sql.DB) (*Result, error) {
	if err := ensureSchema(ctx, db); err != nil {
		return nil, err
	}
	p, err := newProvider(db)
	if err != nil {
		return nil, err
	}
	r, err := p.Down(ctx)
	if errors.Is(err, goose.ErrNoNextVersion) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("migrate down: %w", cause(err))
	}
	return &Result{Version: r.Source.Version, Name: path.Base(r.Source.Path), Duration: r.Duration}, nil
}

// Status lists every embedded migration, oldest first, with whether it is
// applied.
func Status(ctx context.Context, db *sql.DB) ([]Migration, error) {
	if err := ensureSchema(ctx, db); err != nil {
		return nil, err
	}
	p, err := newProvider(db)
	if err != nil {
		return nil, err
	}
	st, err := p.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("migration status: %w", err)
	}
	out := make([]Migration, 0, len(st))
	for _, s := range st {
		out = append(out, Migration{
			Version:   s.Source.Version,
			Name:      path.Base(s.Source.Path),
			Applied:   s.State == goose.StateApplied,
			AppliedAt: s.AppliedAt,
		})
	}
	return out, nil
}

// Pending reports how many migrations are not applied yet.
func Pending(ctx context.Context, db *sql.DB) (int, error) {
	st, err := Status(ctx, db)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, m := range st {
		if !m.Applied {
			n++
		}
	}
	return n, nil
}

// cause unwraps goose's PartialError, whose own message repeats the whole
// migration list, to the error of the migration that failed.
func cause(err error) error {
	var pe *goose.PartialError
	if errors.As(err, &pe) && pe.Failed != nil && pe.Failed.Error != nil {
		return fmt.Errorf("%s: %w", path.Base(pe.Failed.Source.Path), pe.Failed.Error)
	}
	return err
}
