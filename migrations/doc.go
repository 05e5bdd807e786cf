// Package migrations holds pgfeed's own database schema as goose SQL
// migrations embedded in the binary, and runs them.
//
// Everything pgfeed creates lives in schema "pgfeed": the change log
// (pgfeed.changes), the table of awake listeners, the generic capture trigger
// functions, and goose's version table, pgfeed.goose_db_version, which keeps
// pgfeed's migration history apart from the application's own goose table.
//
// Invariants: migrations never touch application tables (the Down of the
// capture functions refuses while tables still use them, rather than dropping
// the application's triggers); Up is idempotent; concurrent runs (several
// nodes starting at once) are serialized by a PostgreSQL advisory lock.
package migrations
