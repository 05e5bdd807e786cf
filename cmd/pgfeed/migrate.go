package main

import (
	"context"
	"database/sql"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx", for goose
	"github.com/spf13/cobra"

	"github.com/pgfeed/pgfeed/migrations"
)

// connectTimeout bounds how long connecting to the database may take.
const connectTimeout = 30 * time.Second

// openSQL opens database/sql on url and checks that the database answers.
func openSQL(ctx context.Context, url string) (*sql.DB, error) {
	db, err := sql.Open("pgx", url)
	if err != nil {
		return nil, fmt.Errorf("connect to database: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("connect to database: %w", err)
	}
	return db, nil
}

// connect opens one pgx connection to url.
func connect(ctx context.Context, url string) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("connect to database: %w", err)
	}
	return conn, nil
}

// withSQL loads the configuration, opens the database and calls fn.
func withSQL(cmd *cobra.Command, fn func(ctx context.Context, db *sql.DB) error) error {
	cfg, err := loadConfig(cmd.Flags())
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	db, err := openSQL(ctx, cfg.Database.URL)
	if err != nil {
		return err
	}
	defer db.Close()
	return fn(ctx, db)
}

func (a *app) migrateCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply, roll back or show pgfeed's own schema migrations (schema pgfeed)",
		Args:  cobra.ArbitraryArgs,
		RunE:  unknownSubcommand,
	}
	cmd.AddCommand(
		&cobra.Command{
			Use:   "up",
			Short: "Apply every pending migration",
			Args:  noArgs,
			RunE: action(func(cmd *cobra.Command, _ []string) error {
				return withSQL(cmd, a.migrateUp)
			}),
		},
		&cobra.Command{
			Use:   "down",
			Short: "Roll back the newest applied migration",
			Args:  noArgs,
			RunE: action(func(cmd *cobra.Command, _ []string) error {
				return withSQL(cmd, a.migrateDown)
			}),
		},
		&cobra.Command{
			Use:   "status",
			Short: "List the migrations and whether each is applied",
			Args:  noArgs,
			RunE: action(func(cmd *cobra.Command, _ []string) error {
				return withSQL(cmd, a.migrateStatus)
			}),
		},
	)
	return cmd
}

func (a *app) migrateUp(ctx context.Context, db *sql.DB) error {
	res, err := migrations.Up(ctx, db)
	if err != nil {
		return err
	}
	if len(res) == 0 {
		fmt.Fprintln(a.stdout, "pgfeed schema is up to date")
		return nil
	}
	for _, r := range res {
		fmt.Fprintf(a.stdout, "applied %s (version %d) in %s\n", r.Name, r.Version, r.Duration.Round(time.Millisecond))
	}
	return nil
}

func (a *app) migrateDown(ctx context.Context, db *sql.DB) error {
	r, err := migrations.Down(ctx, db)
	if err != nil {
		return err
	}
	if r == nil {
		fmt.Fprintln(a.stdout, "nothing to roll back")
		return nil
	}
	fmt.Fprintf(a.stdout, "rolled back %s (version %d) in %s\n", r.Name, r.Version, r.Duration.Round(time.Millisecond))
	return nil
}

func (a *app) migrateStatus(ctx context.Context, db *sql.DB) error {
	st, err := migrations.Status(ctx, db)
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "VERSION\tNAME\tAPPLIED")
	for _, m := range st {
		applied := "pending"
		if m.Applied {
			applied = m.AppliedAt.UTC().Format("2006-01-02 15:04:05 MST")
		}
		fmt.Fprintf(w, "%d\t%s\t%s\n", m.Version, m.Name, applied)
	}
	return w.Flush()
}
