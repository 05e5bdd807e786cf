// Package listener reads captured changes out of PostgreSQL and emits them
// as one ordered stream. It knows nothing about clients or HTTP.
//
// # Trigger source: ticks and batches
//
// The capture triggers write the changed rows to pgfeed.changes (one log
// row per changed row, or one per chunk of a statement's rows: expandLogRow
// splits those, keeping their order, and renders values as to_jsonb does),
// tagged with the writing transaction's id (xid8) and a sequence value taken
// at write time. Sequence values do not follow commit order, so a reader
// asking for "seq > last" would skip a row whose transaction commits late.
// Instead, as in PgQ, a tick (pgfeed.ticks) records a snapshot; the batch of
// tick N holds every change of the transactions visible in tick N's snapshot
// and not in tick N-1's (CreateTick, ReadBatch).
//
// Invariants:
//   - Every committed change is in exactly one batch; rolled-back changes are
//     in none (they are never visible).
//   - Batches follow commit order. Inside a batch, transactions are ordered by
//     their largest sequence value and a transaction's changes are adjacent:
//     two transactions that changed the same row keep their commit order.
//   - Ticks are created one at a time under an advisory lock, so tick ids and
//     snapshots grow together, and a batch reads the same on every node: a
//     Cursor (tick, position) means the same change everywhere.
//
// Source is the continuous reader: one connection, one goroutine (Run). It
// LISTENs on channel pgfeed and reads on every wake-up and every Poll. When
// transactions come at Config.NotifyBelow a second or faster it promises in
// pgfeed.listeners to read back to back, and writers skip their NOTIFY
// (whose commit-time lock serializes them); under half that rate it
// withdraws the promise, then reads until every transaction that began
// while the promise held has ended, so none waits for the poll. It
// reconnects with capped, jittered backoff, starting each session asleep
// (withdrawing whatever promise the previous one left), and prunes ticks
// and changes older than Retention in bounded batches.
package listener
