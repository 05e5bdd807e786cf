package triggers

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Capture for the logical source: a table is captured when it is a member
// of pgfeed's publication. The statements are written so that running them
// again changes nothing (the publication is created when absent, a table
// added only when it is not a member yet), as with the triggers.

// Publication names the publication the logical source decodes and says how
// tables join it.
type Publication struct {
	// Name is the publication (logical.publication). Zero: "pgfeed".
	Name string
	// ReplicaIdentityFull makes Enable set REPLICA IDENTITY FULL, so that
	// updates and deletes carry the whole old row (and unchanged TOASTed
	// values) at the cost of more WAL per update and delete.
	ReplicaIdentityFull bool
}

func (p Publication) name() string {
	if p.Name == "" {
		return "pgfeed"
	}
	return p.Name
}

// dollarQuote delimits the DO blocks; no identifier can end it early, as
// identifiers go in as quoted literals.
const dollarQuote = "$pgfeed$"

// EnableLogicalStatements are the statements that add t to the
// publication (creating it when absent), and set REPLICA IDENTITY FULL when
// asked.
func EnableLogicalStatements(t Table, p Publication) []string {
	pub := pgx.Identifier{p.name()}.Sanitize()
	tbl := t.Ident().Sanitize()
	stmts := []string{
		"DO " + dollarQuote + " BEGIN\n" +
			"  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = " + quoteLiteral(p.name()) + ") THEN\n" +
			"    CREATE PUBLICATION " + pub + ";\n" +
			"  END IF;\n" +
			"  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables WHERE pubname = " + quoteLiteral(p.name()) +
			" AND schemaname = " + quoteLiteral(t.Schema) + " AND tablename = " + quoteLiteral(t.Name) + ") THEN\n" +
			"    ALTER PUBLICATION " + pub + " ADD TABLE " + tbl + ";\n" +
			"  END IF;\n" +
			"END " + dollarQuote,
	}
	if p.ReplicaIdentityFull {
		stmts = append(stmts, "ALTER TABLE "+tbl+" REPLICA IDENTITY FULL")
	}
	return stmts
}

// DisableLogicalStatements are the statements that remove t from the
// publication. The replica identity is left as it is: it may serve more
// than pgfeed.
func DisableLogicalStatements(t Table, p Publication) []string {
	return []string{
		"DO " + dollarQuote + " BEGIN\n" +
			"  IF EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel r JOIN pg_catalog.pg_publication p ON p.oid = r.prpubid\n" +
			"             WHERE p.pubname = " + quoteLiteral(p.name()) + " AND r.prrelid = " + quoteLiteral(t.Ident().Sanitize()) + "::regclass) THEN\n" +
			"    ALTER PUBLICATION " + pgx.Identifier{p.name()}.Sanitize() + " DROP TABLE " + t.Ident().Sanitize() + ";\n" +
			"  END IF;\n" +
			"END " + dollarQuote,
	}
}

// EnableLogical adds each named table to the publication, all or none,
// after the checks Enable makes (and one more: an unlogged table's changes
// are not in the WAL).
func EnableLogical(ctx context.Context, db DB, p Publication, names ...string) ([]Table, error) {
	return applyLogical(ctx, db, names, p.checkIdentity, func(t Table) []string { return EnableLogicalStatements(t, p) })
}

// checkIdentity refuses a table with REPLICA IDENTITY NOTHING, unless it
// is about to get FULL: once published, its updates and deletes would fail.
func (p Publication) checkIdentity(t Table, identity string) error {
	if identity == "n" && !p.ReplicaIdentityFull {
		return refuse("table %s has REPLICA IDENTITY NOTHING: once it is published, PostgreSQL refuses its updates and deletes; set ALTER TABLE %s REPLICA IDENTITY DEFAULT, or enable with --replica-identity-full", t, t.Ident().Sanitize())
	}
	return nil
}

// DisableLogical removes each named table from the publication, all or
// none. A table that is not a member is not an error.
func DisableLogical(ctx context.Context, db DB, p Publication, names ...string) ([]Table, error) {
	return applyLogical(ctx, db, names, nil, func(t Table) []string { return DisableLogicalStatements(t, p) })
}

func applyLogical(ctx context.Context, db DB, names []string, check func(Table, string) error, render func(Table) []string) ([]Table, error) {
	tables, err := resolveLogical(ctx, db, names, check)
	if err != nil {
		return nil, err
	}
	if err := execAll(ctx, db, tables, render); err != nil {
		return nil, err
	}
	return tables, nil
}

// resolveLogical resolves the names as Enable does, refuses unlogged
// tables, and passes each table's replica identity (relreplident) to check
// when it is set.
func resolveLogical(ctx context.Context, db DB, names []string, check func(Table, string) error) ([]Table, error) {
	tables, err := resolveAll(ctx, db, names)
	if err != nil {
		return nil, err
	}
	for _, t := range tables {
		var (
			unlogged bool
			identity string
		)
		if err := db.QueryRow(ctx, `SELECT relpersistence = 'u', relreplident::text FROM pg_class WHERE oid = $1::regclass`, t.Ident().Sanitize()).Scan(&unlogged, &identity); err != nil {
			return nil, fmt.Errorf("read catalog entry of %s: %w", t, err)
		}
		if unlogged {
			return nil, refuse("table %s is unlogged: its changes are not written to the WAL, so logical replication cannot see them; make it logged (ALTER TABLE %s SET LOGGED) or use source: trigger", t, t.Ident().Sanitize())
		}
		if check != nil {
			if err := check(t, identity); err != nil {
				return nil, err
			}
		}
	}
	return tables, nil
}

// ListLogical returns the tables of the publication, sorted by schema and
// name, with source "logical". State is "enabled" (updates and deletes carry
// the old row's key), "enabled:identity-full" (they carry the whole old
// row), "no-key" (the table has no primary key, so its changes cannot be
// keyed), "identity-index" (the replica identity is another index, so old
// rows carry that index's columns) or "no-identity" (REPLICA IDENTITY
// NOTHING: updates and deletes of the table fail while it is published).
// A publication that does not exist lists nothing.
func ListLogical(ctx context.Context, db DB, p Publication) ([]Captured, error) {
	rows, err := db.Query(ctx, `
		SELECT t.schemaname::text, t.tablename::text, c.relreplident::text,
		       EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid),
		       coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord)
		                   FROM pg_index i
		                   CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
		                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
		                  WHERE i.indrelid = c.oid AND i.indisprimary), '{}')
		  FROM pg_publication_tables t
		  JOIN pg_namespace n ON n.nspname = t.schemaname
		  JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename
		 WHERE t.pubname = $1
		 ORDER BY 1, 2`, p.name())
	if err != nil {
		return nil, fmt.Errorf("list published tables: %w", err)
	}
	var out []Captured
	for rows.Next() {
		var (
			c     Captured
			ident string
		)
		if err := rows.Scan(&c.Schema, &c.Name, &ident, &c.Child, &c.Key); err != nil {
			rows.Close()
			return nil, fmt.Errorf("list published tables: %w", err)
		}
		c.Source = "logical"
		switch {
		case len(c.Key) == 0:
			c.State = "no-key"
		case ident == "f":
			c.State = "enabled:identity-full"
		case ident == "n":
			c.State = "no-identity"
		case ident == "i":
			c.State = "identity-index"
		default:
			c.State = "enabled"
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list published tables: %w", err)
	}
	return out, nil
}

// LogicalMigration renders a goose SQL migration whose Up adds the tables
// to the publication (the very statements EnableLogical runs) and whose
// Down removes them.
func LogicalMigration(tables []Table, p Publication, generator string, now time.Time) string {
	return renderMigration(tables, generator, now,
		"-- Up runs the statements of `pgfeed triggers enable` with source: logical, Down those of `pgfeed triggers disable`.\n"+
			"-- Down leaves the tables' replica identity as it is.\n",
		func(t Table) []string { return EnableLogicalStatements(t, p) },
		func(t Table) []string { return DisableLogicalStatements(t, p) })
}

// GenerateLogical is Generate for the logical source.
func GenerateLogical(ctx context.Context, db DB, p Publication, dir string, names []string, generator string, now time.Time) (string, error) {
	tables, err := resolveLogical(ctx, db, names, p.checkIdentity)
	if err != nil {
		return "", err
	}
	return writeMigration(dir, tables, now, LogicalMigration(tables, p, generator, now))
}
