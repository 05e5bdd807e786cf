package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgfeed/pgfeed/triggers"
)

// withConn loads the configuration, connects to the database and calls fn.
func withConn(cmd *cobra.Command, fn func(ctx context.Context, conn *pgx.Conn, cfg *Config) error) error {
	cfg, err := loadConfig(cmd.Flags())
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	conn, err := connect(ctx, cfg.Database.URL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return fn(ctx, conn, cfg)
}

// publication reads how the logical source captures tables from cfg and
// the --replica-identity-full flag, which only the logical source takes.
func publication(cmd *cobra.Command, cfg *Config) (triggers.Publication, error) {
	full, _ := cmd.Flags().GetBool("replica-identity-full")
	if full && cfg.Source != "logical" {
		return triggers.Publication{}, &usageError{msg: "--replica-identity-full applies to source: logical only (the trigger source always captures whole old rows); set source: logical or drop the flag"}
	}
	return triggers.Publication{Name: cfg.Logical.Publication, ReplicaIdentityFull: full}, nil
}

const replicaIdentityFullHelp = "with source: logical, also set REPLICA IDENTITY FULL, so that updates and deletes carry the whole old row (more WAL per update and delete)"

// needTables requires at least one table name.
func needTables(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return &usageError{msg: fmt.Sprintf("%q needs at least one table (schema.table, or table for public.table)", cmd.CommandPath())}
	}
	return nil
}

// refusedOr passes the triggers package's refusals through unchanged, as
// they are one finished sentence, and wraps any other error.
func refusedOr(err error, op string) error {
	if errors.Is(err, triggers.ErrRefused) || errors.Is(err, triggers.ErrNotMigrated) {
		return err
	}
	return fmt.Errorf("%s: %w", op, err)
}

func (a *app) triggersCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "triggers",
		Short: "Enable, disable, list or script change capture on tables",
		Long: `Enable, disable, list or script change capture on tables.

With source: trigger (the default) capture means pgfeed's triggers on the
table; with source: logical it means the table's membership in the
publication (logical.publication). The source comes from the configuration.`,
		Args: cobra.ArbitraryArgs,
		RunE: unknownSubcommand,
	}
	generate := &cobra.Command{
		Use:   "generate TABLE... --dir DIR",
		Short: "Write a goose SQL migration that enables capture (Up) and disables it (Down)",
		Args:  needTables,
		RunE: action(func(cmd *cobra.Command, args []string) error {
			dir, _ := cmd.Flags().GetString("dir")
			return withConn(cmd, func(ctx context.Context, conn *pgx.Conn, cfg *Config) error {
				pub, err := publication(cmd, cfg)
				if err != nil {
					return err
				}
				var path string
				if cfg.Source == "logical" {
					path, err = triggers.GenerateLogical(ctx, conn, pub, dir, args, "pgfeed "+version, time.Now())
				} else {
					path, err = triggers.Generate(ctx, conn, dir, args, "pgfeed "+version, time.Now())
				}
				if err != nil {
					return refusedOr(err, "generate migration")
				}
				fmt.Fprintln(a.stdout, path)
				return nil
			})
		}),
	}
	generate.Flags().String("dir", "", "directory of the goose migrations to write into (required)")
	_ = generate.MarkFlagRequired("dir")
	generate.Flags().Bool("replica-identity-full", false, replicaIdentityFullHelp)
	enable := &cobra.Command{
		Use:   "enable TABLE...",
		Short: "Start capturing the changes of each table",
		Args:  needTables,
		RunE: action(func(cmd *cobra.Command, args []string) error {
			return withConn(cmd, func(ctx context.Context, conn *pgx.Conn, cfg *Config) error {
				pub, err := publication(cmd, cfg)
				if err != nil {
					return err
				}
				var tables []triggers.Table
				if cfg.Source == "logical" {
					tables, err = triggers.EnableLogical(ctx, conn, pub, args...)
				} else {
					tables, err = triggers.Enable(ctx, conn, args...)
				}
				if err != nil {
					return refusedOr(err, "enable capture")
				}
				for _, t := range tables {
					fmt.Fprintf(a.stdout, "capture enabled on %s\n", t)
				}
				return nil
			})
		}),
	}
	enable.Flags().Bool("replica-identity-full", false, replicaIdentityFullHelp)

	cmd.AddCommand(
		enable,
		&cobra.Command{
			Use:   "disable TABLE...",
			Short: "Stop capturing the changes of each table",
			Args:  needTables,
			RunE: action(func(cmd *cobra.Command, args []string) error {
				return withConn(cmd, func(ctx context.Context, conn *pgx.Conn, cfg *Config) error {
					var (
						tables []triggers.Table
						err    error
					)
					if cfg.Source == "logical" {
						tables, err = triggers.DisableLogical(ctx, conn, triggers.Publication{Name: cfg.Logical.Publication}, args...)
					} else {
						tables, err = triggers.Disable(ctx, conn, args...)
					}
					if err != nil {
						return refusedOr(err, "disable capture")
					}
					for _, t := range tables {
						fmt.Fprintf(a.stdout, "capture disabled on %s\n", t)
					}
					return nil
				})
			}),
		},
		&cobra.Command{
			Use:   "list",
			Short: "List every table with capture on, its source and state",
			Args:  noArgs,
			RunE: action(func(cmd *cobra.Command, _ []string) error {
				return withConn(cmd, a.listCaptured)
			}),
		},
		generate,
	)
	return cmd
}

// listCaptured lists the tables captured by either source: the triggers,
// and the members of the configured publication.
func (a *app) listCaptured(ctx context.Context, conn *pgx.Conn, cfg *Config) error {
	list, err := triggers.List(ctx, conn)
	if err != nil {
		return err
	}
	published, err := triggers.ListLogical(ctx, conn, triggers.Publication{Name: cfg.Logical.Publication})
	if err != nil {
		return err
	}
	list = append(list, published...)
	if len(list) == 0 {
		fmt.Fprintln(a.stdout, "no table is captured")
		return nil
	}
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "TABLE\tSOURCE\tSTATE\tKEY")
	for _, c := range list {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", c.Table, c.Source, c.State, strings.Join(c.Key, ","))
	}
	return w.Flush()
}
