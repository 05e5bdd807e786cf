// Package triggers turns change capture on and off per table, lists the
// captured tables, and renders the same statements as a goose migration for
// DBAs who manage capture through their own migration flow.
//
// Capture means four triggers named pgfeed_capture_{insert,update,delete,
// truncate} on the table, calling pgfeed's generic capture functions (package
// migrations). On an ordinary table INSERT and DELETE are captured by
// statement-level triggers with transition tables, so a bulk write logs its
// rows in one set-based statement, as JSON arrays of rows; UPDATE is captured per row, because the
// old and new transition rows of a statement are not paired by anything
// PostgreSQL guarantees. On partitions and inheritance children every DML
// trigger is row-level: statement-level triggers of a child do not fire when
// rows are written through its parent. TRUNCATE is statement-level.
//
// The primary key columns are passed to the capture functions as trigger
// arguments. After changing a table's primary key, run Enable again: it is
// idempotent and refreshes them (List reports a stale key).
//
// For the logical source, capture is instead membership of the table in
// pgfeed's publication (EnableLogical, DisableLogical, ListLogical,
// GenerateLogical, NewPublicationCatalog): the same resolution and
// refusals, plus unlogged tables; statements that can run twice (DO blocks
// that create the publication when absent and add a table only when it is
// not a member), and REPLICA IDENTITY FULL on request. Disabling never
// changes a table's replica identity.
//
// Invariants: a table name given by a user is resolved by PostgreSQL
// (to_regclass), and every identifier put into SQL comes from the catalog and
// is quoted with pgx.Identifier (inside DO blocks, as a quoted literal of
// the quoted identifier); Enable and the rendered migration run exactly
// the same statements, and so do EnableLogical and its migration; nothing
// here runs at request time.
package triggers
