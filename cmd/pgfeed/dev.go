package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pgfeed/pgfeed/internal/pgtemp"
	"github.com/pgfeed/pgfeed/migrations"
	"github.com/pgfeed/pgfeed/triggers"
)

// demoTable is the table pgfeed dev creates and captures.
const demoTable = "public.demo_orders"

func (a *app) devCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "dev",
		Short: "Start a throwaway PostgreSQL (unless database.url is set), migrate it and capture a demo table",
		Long: `dev prepares a database to try pgfeed on: it migrates pgfeed's schema, creates
the table public.demo_orders with a few rows and captures its changes.

When database.url is not set (in the config file, PGFEED_DATABASE_URL or
--database-url), dev starts a throwaway PostgreSQL from the server binaries on
PATH (or under /usr/lib/postgresql/*/bin), keeps it running until Ctrl-C and
then removes it. When database.url is set, dev prepares that database and
returns.`,
		Args: noArgs,
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd.Flags())
			if err != nil {
				return err
			}
			return a.dev(cmd.Context(), cfg)
		}),
	}
}

// dev runs pgfeed dev. With a throwaway server it blocks until ctx is done.
func (a *app) dev(ctx context.Context, cfg *Config) error {
	if cfg.Database.URLSet {
		fmt.Fprintf(a.stdout, "using the database at %s (database.url)\n", withoutPassword(cfg.Database.URL))
		if err := a.prepareDemo(ctx, cfg.Database.URL); err != nil {
			return err
		}
		return a.serveDemo(ctx, cfg)
	}

	fmt.Fprintln(a.stdout, "database.url is not set: starting a throwaway PostgreSQL from the server binaries on PATH")
	s, err := pgtemp.Start(ctx, pgtemp.Options{})
	if err != nil {
		return fmt.Errorf("start throwaway PostgreSQL (or set database.url to use an existing database): %w", err)
	}
	fmt.Fprintf(a.stdout, "throwaway PostgreSQL running on 127.0.0.1:%d, data and socket in %s (removed when dev stops)\n", s.Port(), s.SocketDir())

	err = a.prepareDemo(ctx, s.URL("postgres"))
	if err == nil {
		dcfg := *cfg
		dcfg.Database.URL = s.URL("postgres")
		err = a.serveDemo(ctx, &dcfg)
		a.log.Info("stopping the throwaway PostgreSQL", "dir", s.SocketDir())
	}
	if stopErr := s.Stop(); stopErr != nil {
		err = errors.Join(err, fmt.Errorf("stop throwaway PostgreSQL: %w", stopErr))
	}
	if err == nil {
		fmt.Fprintln(a.stdout, "throwaway PostgreSQL stopped and removed")
	}
	return err
}

// prepareDemo migrates the database at dbURL, creates and captures the demo
// table, and prints how to try it.
func (a *app) prepareDemo(ctx context.Context, dbURL string) error {
	db, err := openSQL(ctx, dbURL)
	if err != nil {
		return err
	}
	res, err := migrations.Up(ctx, db)
	db.Close()
	if err != nil {
		return err
	}
	if len(res) == 0 {
		fmt.Fprintln(a.stdout, "pgfeed schema is up to date")
	}
	for _, r := range res {
		fmt.Fprintf(a.stdout, "applied migration %s\n", r.Name)
	}

	conn, err := connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))

	var exists bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, demoTable).Scan(&exists); err != nil {
		return fmt.Errorf("look up %s: %w", demoTable, err)
	}
	if !exists {
		_, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS public.demo_orders (
			id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
			customer   text NOT NULL,
			status     text NOT NULL DEFAULT 'open',
			total      numeric(10,2) NOT NULL,
			created_at timestamptz NOT NULL DEFAULT now()
		)`)
		if err != nil {
			return fmt.Errorf("create %s: %w", demoTable, err)
		}
		fmt.Fprintf(a.stdout, "created table %s\n", demoTable)
	} else {
		fmt.Fprintf(a.stdout, "table %s already exists\n", demoTable)
	}

	// Capture first, so that the demo rows below show up as changes.
	tables, err := triggers.Enable(ctx, conn, demoTable)
	if err != nil {
		return refusedOr(err, "enable capture")
	}
	for _, t := range tables {
		fmt.Fprintf(a.stdout, "capture enabled on %s\n", t)
	}

	var empty bool
	if err := conn.QueryRow(ctx, `SELECT NOT EXISTS (SELECT 1 FROM public.demo_orders)`).Scan(&empty); err != nil {
		return fmt.Errorf("read %s: %w", demoTable, err)
	}
	if empty {
		_, err := conn.Exec(ctx, `INSERT INTO public.demo_orders (customer, status, total)
			VALUES ('alice', 'open', 19.90), ('bob', 'paid', 5.00), ('carol', 'shipped', 42.50)`)
		if err != nil {
			return fmt.Errorf("insert demo rows into %s: %w", demoTable, err)
		}
		fmt.Fprintf(a.stdout, "inserted 3 demo rows into %s\n", demoTable)
	}

	fmt.Fprintf(a.stdout, `
ready. Connect with:
  psql %q
make a change:
  INSERT INTO public.demo_orders (customer, total) VALUES ('dave', 12.50);
and see what pgfeed captured:
  SELECT * FROM pgfeed.changes ORDER BY seq;
`, withoutPassword(dbURL))
	return nil
}

// withoutPassword drops the password from a connection string, so that it
// is not printed; psql asks for it.
func withoutPassword(s string) string {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		if strings.Contains(s, "password") {
			return "<database.url>" // key=value form: keep the secret out of the output
		}
		return s
	}
	if u.User == nil {
		return s
	}
	if _, has := u.User.Password(); has {
		u.User = url.User(u.User.Username())
	}
	return u.String()
}

// serveDemo serves the demo table to anonymous clients (unless policies are
// configured) until ctx is done, printing how to connect.
func (a *app) serveDemo(ctx context.Context, cfg *Config) error {
	if cfg.Source != "trigger" {
		// The demo captures with triggers; the logical source is for serve.
		a.log.Info("pgfeed dev captures with triggers", "configured_source", cfg.Source)
		cfg.Source = "trigger"
	}
	if len(cfg.Policies) == 0 {
		cfg.Auth.Anonymous = true
		cfg.Policies = []Policy{{Table: demoTable, Roles: []string{"anon"}}}
		fmt.Fprintf(a.stdout, "no policies configured: serving %s to anonymous clients\n", demoTable)
	}
	return a.serve(ctx, cfg, func(addr string) {
		fmt.Fprintf(a.stdout, `
pgfeed is serving on http://%[1]s
  follow the demo table as Server-Sent Events:
    curl -N 'http://%[1]s/v1/sse/%[2]s'
  long-poll it:
    curl 'http://%[1]s/v1/changes/%[2]s?wait=30s'
  or open a WebSocket to ws://%[1]s/v1/ws and send
    {"type":"subscribe","id":"s1","table":"%[2]s"}
press Ctrl-C to stop
`, addr, demoTable)
	})
}
