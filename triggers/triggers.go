package triggers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DB is what this package needs from a connection or pool: *pgx.Conn,
// *pgxpool.Pool and pgx.Tx all satisfy it.
type DB interface {
	Begin(ctx context.Context) (pgx.Tx, error)
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// ErrRefused is wrapped by every error that refuses a table (missing, not a
// table, no primary key, ...); the message says which and why.
var ErrRefused = errors.New("refused")

// refusal is a one-sentence error about a table, matching ErrRefused.
type refusal struct{ msg string }

func (r *refusal) Error() string        { return r.msg }
func (r *refusal) Is(target error) bool { return target == ErrRefused }

func refuse(format string, args ...any) error {
	return &refusal{msg: fmt.Sprintf(format, args...)}
}

// Table is a captured (or capturable) table as the catalog names it.
type Table struct {
	Schema string
	Name   string
	// Key holds the primary key columns, in key order.
	Key []string
	// Child is true for partitions and inheritance children, which are
	// captured with row-level triggers only.
	Child bool
}

// String is the schema-qualified name as events show it: schema.table,
// unquoted.
func (t Table) String() string { return t.Schema + "." + t.Name }

// Ident is the quotable identifier of the table.
func (t Table) Ident() pgx.Identifier { return pgx.Identifier{t.Schema, t.Name} }

// triggerNames are the triggers capture installs, in creation order.
var triggerNames = []string{
	"pgfeed_capture_insert",
	"pgfeed_capture_update",
	"pgfeed_capture_delete",
	"pgfeed_capture_truncate",
}

// Resolve reads name the way PostgreSQL reads a qualified table name
// (`orders`, `public.orders`, `"S p"."we""ird"`; unqualified names follow the
// search_path) and checks that pgfeed can capture it.
func Resolve(ctx context.Context, db DB, name string) (Table, error) {
	var (
		oid         *uint32
		schema, rel string
		kind        string
		persistence string
		isPartition bool
		hasParent   bool
		hasChildren bool
	)
	err := db.QueryRow(ctx, `SELECT to_regclass($1)::oid`, name).Scan(&oid)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			return Table{}, refuse("table %q is not a valid table name: %s", name, pgErr.Message)
		}
		return Table{}, fmt.Errorf("resolve table %q: %w", name, err)
	}
	if oid == nil {
		return Table{}, refuse("table %q does not exist (names are read as PostgreSQL reads them: schema.table, unquoted names folded to lower case, \"Quoted\" names kept as written)", name)
	}
	err = db.QueryRow(ctx, `
		SELECT n.nspname, c.relname, c.relkind::text, c.relpersistence::text, c.relispartition,
		       EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid),
		       EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = c.oid)
		  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		 WHERE c.oid = $1`, *oid).Scan(&schema, &rel, &kind, &persistence, &isPartition, &hasParent, &hasChildren)
	if err != nil {
		return Table{}, fmt.Errorf("read catalog entry of %q: %w", name, err)
	}
	t := Table{Schema: schema, Name: rel, Child: hasParent}
	switch kind {
	case "r":
	case "p":
		return Table{}, refuse("table %s is partitioned: pgfeed captures partitions, not the partitioned parent; enable capture on each partition instead (for example: pgfeed triggers enable %s)", t, strings.Join(partitionHint(ctx, db, *oid), " "))
	case "v":
		return Table{}, refuse("%s is a view, not a table: enable capture on the tables it reads from", t)
	case "m":
		return Table{}, refuse("%s is a materialized view, not a table: enable capture on the tables it is built from", t)
	case "f":
		return Table{}, refuse("%s is a foreign table: its rows change in another server, where capture must be enabled", t)
	default:
		return Table{}, refuse("%s is not a table (relkind %q)", t, kind)
	}
	switch {
	case schema == "pgfeed":
		return Table{}, refuse("table %s belongs to pgfeed itself and cannot be captured", t)
	case schema == "pg_catalog" || schema == "information_schema":
		return Table{}, refuse("table %s is a system catalog and cannot be captured", t)
	case persistence == "t":
		return Table{}, refuse("table %s is temporary: only its own session can see it, so pgfeed cannot serve its changes", t)
	case hasChildren && !isPartition:
		return Table{}, refuse("table %s has inheritance children: pgfeed does not capture inheritance parents; enable capture on each child table, or move to declarative partitioning", t)
	}
	rows, err := db.Query(ctx, `
		SELECT a.attname
		  FROM pg_index i
		  CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
		  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
		 WHERE i.indrelid = $1 AND i.indisprimary
		 ORDER BY k.ord`, *oid)
	if err != nil {
		return Table{}, fmt.Errorf("read primary key of %s: %w", t, err)
	}
	t.Key, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return Table{}, fmt.Errorf("read primary key of %s: %w", t, err)
	}
	if len(t.Key) == 0 {
		return Table{}, refuse("table %s has no primary key, which pgfeed needs to name each changed row: add one, for example ALTER TABLE %s ADD PRIMARY KEY (id)", t, t.Ident().Sanitize())
	}
	return t, nil
}

func partitionHint(ctx context.Context, db DB, parent uint32) []string {
	rows, err := db.Query(ctx, `
		SELECT format('%I.%I', n.nspname, c.relname)
		  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		  JOIN pg_namespace n ON n.oid = c.relnamespace
		 WHERE i.inhparent = $1 ORDER BY 1 LIMIT 3`, parent)
	if err != nil {
		return []string{"SCHEMA.PARTITION"}
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(names) == 0 {
		return []string{"SCHEMA.PARTITION"}
	}
	for i, n := range names {
		names[i] = shellQuote(n)
	}
	return names
}

func shellQuote(s string) string {
	if strings.IndexFunc(s, func(r rune) bool {
		return !(r == '.' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9')
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// EnableStatements are the statements that enable capture on t. They drop
// any earlier pgfeed triggers first, so running them again is harmless and
// refreshes the key columns.
func EnableStatements(t Table) []string {
	tbl := t.Ident().Sanitize()
	key := make([]string, len(t.Key))
	for i, k := range t.Key {
		key[i] = quoteLiteral(k)
	}
	args := strings.Join(key, ", ")
	stmts := DisableStatements(t)
	if t.Child {
		stmts = append(stmts,
			fmt.Sprintf("CREATE TRIGGER pgfeed_capture_insert AFTER INSERT ON %s FOR EACH ROW EXECUTE FUNCTION pgfeed.capture_row(%s)", tbl, args),
			fmt.Sprintf("CREATE TRIGGER pgfeed_capture_update AFTER UPDATE ON %s FOR EACH ROW EXECUTE FUNCTION pgfeed.capture_row(%s)", tbl, args),
			fmt.Sprintf("CREATE TRIGGER pgfeed_capture_delete AFTER DELETE ON %s FOR EACH ROW EXECUTE FUNCTION pgfeed.capture_row(%s)", tbl, args),
		)
	} else {
		stmts = append(stmts,
			fmt.Sprintf("CREATE TRIGGER pgfeed_capture_insert AFTER INSERT ON %s REFERENCING NEW TABLE AS pgfeed_new_rows FOR EACH STATEMENT EXECUTE FUNCTION pgfeed.capture_insert(%s)", tbl, args),
			fmt.Sprintf("CREATE TRIGGER pgfeed_capture_update AFTER UPDATE ON %s FOR EACH ROW EXECUTE FUNCTION pgfeed.capture_row(%s)", tbl, args),
			fmt.Sprintf("CREATE TRIGGER pgfeed_capture_delete AFTER DELETE ON %s REFERENCING OLD TABLE AS pgfeed_old_rows FOR EACH STATEMENT EXECUTE FUNCTION pgfeed.capture_delete(%s)", tbl, args),
		)
	}
	return append(stmts,
		fmt.Sprintf("CREATE TRIGGER pgfeed_capture_truncate AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION pgfeed.capture_truncate()", tbl))
}

// DisableStatements are the statements that stop capture on t.
func DisableStatements(t Table) []string {
	tbl := t.Ident().Sanitize()
	stmts := make([]string, len(triggerNames))
	for i, name := range triggerNames {
		stmts[i] = fmt.Sprintf("DROP TRIGGER IF EXISTS %s ON %s", name, tbl)
	}
	return stmts
}

// quoteLiteral renders s as an SQL string literal that reads back as s
// whatever standard_conforming_strings is.
func quoteLiteral(s string) string {
	q := "'" + strings.ReplaceAll(s, "'", "''") + "'"
	if strings.Contains(s, `\`) {
		return "E" + strings.ReplaceAll(q, `\`, `\\`)
	}
	return q
}

// Enable starts capturing each named table, all or none: every name is
// resolved and checked before anything changes, and the triggers of all of
// them are created in one transaction.
func Enable(ctx context.Context, db DB, names ...string) ([]Table, error) {
	return apply(ctx, db, names, EnableStatements)
}

// Disable stops capturing each named table, all or none. Disabling a table
// that is not captured is not an error.
func Disable(ctx context.Context, db DB, names ...string) ([]Table, error) {
	return apply(ctx, db, names, DisableStatements)
}

func apply(ctx context.Context, db DB, names []string, render func(Table) []string) ([]Table, error) {
	if err := requireSchema(ctx, db); err != nil {
		return nil, err
	}
	tables, err := resolveAll(ctx, db, names)
	if err != nil {
		return nil, err
	}
	if err := execAll(ctx, db, tables, render); err != nil {
		return nil, err
	}
	return tables, nil
}

// execAll runs each table's rendered statements, all in one transaction.
func execAll(ctx context.Context, db DB, tables []Table, render func(Table) []string) error {
	return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		for _, t := range tables {
			for _, stmt := range render(t) {
				if _, err := tx.Exec(ctx, stmt); err != nil {
					return fmt.Errorf("table %s: %w", t, err)
				}
			}
		}
		return nil
	})
}

func resolveAll(ctx context.Context, db DB, names []string) ([]Table, error) {
	if len(names) == 0 {
		return nil, refuse("no table named")
	}
	tables := make([]Table, 0, len(names))
	for _, name := range names {
		t, err := Resolve(ctx, db, name)
		if err != nil {
			return nil, err
		}
		if !slices.ContainsFunc(tables, func(u Table) bool { return u.Schema == t.Schema && u.Name == t.Name }) {
			tables = append(tables, t)
		}
	}
	return tables, nil
}

// ErrNotMigrated means pgfeed's schema is missing: run `pgfeed migrate up`.
var ErrNotMigrated = errors.New("pgfeed's schema is not installed in this database: run \"pgfeed migrate up\" first")

func requireSchema(ctx context.Context, db DB) error {
	var ok bool
	err := db.QueryRow(ctx, `SELECT to_regproc('pgfeed.capture_row') IS NOT NULL`).Scan(&ok)
	if err != nil {
		return fmt.Errorf("check pgfeed schema: %w", err)
	}
	if !ok {
		return ErrNotMigrated
	}
	return nil
}

// Captured describes a table with pgfeed triggers.
type Captured struct {
	Table
	// Source is always "trigger" here; logical replication lists its own.
	Source string
	// State is "enabled" when every capture trigger is present and fires,
	// "partial" when some are missing, "disabled" when the triggers exist but
	// were switched off (ALTER TABLE ... DISABLE TRIGGER), "stale-key" when
	// the key columns given to the triggers are no longer the primary key.
	State string
}

// List returns every table with at least one pgfeed capture trigger, sorted
// by schema and name.
func List(ctx context.Context, db DB) ([]Captured, error) {
	rows, err := db.Query(ctx, `
		SELECT n.nspname, c.relname,
		       count(*) AS triggers,
		       count(*) FILTER (WHERE t.tgenabled = 'D') AS off,
		       (array_agg(t.tgargs) FILTER (WHERE t.tgname = 'pgfeed_capture_update'))[1] AS args,
		       EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid) AS child,
		       coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord)
		                   FROM pg_index i
		                   CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
		                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
		                  WHERE i.indrelid = c.oid AND i.indisprimary), '{}') AS pk
		  FROM pg_trigger t
		  JOIN pg_class c ON c.oid = t.tgrelid
		  JOIN pg_namespace n ON n.oid = c.relnamespace
		 WHERE t.tgname = ANY ($1) AND NOT t.tgisinternal
		 GROUP BY n.nspname, c.relname, c.oid
		 ORDER BY n.nspname, c.relname`, triggerNames)
	if err != nil {
		return nil, fmt.Errorf("list captured tables: %w", err)
	}
	var out []Captured
	for rows.Next() {
		var (
			c         Captured
			count     int
			off       int
			args      []byte
			currentPK []string
		)
		if err := rows.Scan(&c.Schema, &c.Name, &count, &off, &args, &c.Child, &currentPK); err != nil {
			rows.Close()
			return nil, fmt.Errorf("list captured tables: %w", err)
		}
		c.Source = "trigger"
		c.Key = splitArgs(args)
		switch {
		case count < len(triggerNames):
			c.State = "partial"
		case off > 0:
			c.State = "disabled"
		case !slices.Equal(c.Key, currentPK):
			c.State = "stale-key"
		default:
			c.State = "enabled"
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list captured tables: %w", err)
	}
	return out, nil
}

// splitArgs decodes pg_trigger.tgargs: each argument followed by a NUL byte.
func splitArgs(b []byte) []string {
	if len(b) == 0 {
		return nil
	}
	parts := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
	return parts
}
