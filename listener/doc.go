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
// Source is the continuous reader: one connection and one goroutine for
// reading (Run), and a pruning goroutine that Run owns, on a connection of
// its own per pass. It LISTENs on channel pgfeed and reads on every wake-up
// and every Poll; a wake-up whose transaction (the NOTIFY's payload) the
// last tick read already covered is skipped. A read is one round trip: the
// tick is cut and its batch read in one pipeline. When transactions come at
// Config.NotifyBelow a second or faster it promises in pgfeed.listeners to
// read back to back (a trigger copies the earliest promise into the
// sequence pgfeed.awake_until, which writers read), and writers skip their
// NOTIFY (whose commit-time lock serializes them); under half that rate it
// withdraws the promise, then reads until every transaction that began
// while the promise held has ended, so none waits for the poll. It
// reconnects with capped, jittered backoff, starting each session asleep
// (withdrawing whatever promise the previous one left). Ticks and changes
// older than Retention are pruned in bounded batches.
//
// # Logical source: a replication slot
//
// Logical streams the tables of a publication from a persistent logical
// replication slot with the pgoutput plugin (protocol version 1, no
// streaming of transactions in progress, no logical messages). Setup checks
// wal_level and the role's REPLICATION attribute, creates the publication
// (empty) and the slot when they are absent, and refuses a slot another
// process holds (after waiting SlotWait for a walsender that is exiting)
// and a slot PostgreSQL has invalidated (max_slot_wal_keep_size): its
// changes are lost, and retrying would not bring them back.
// The replication connection renders values with DateStyle ISO, TimeZone
// UTC, IntervalStyle postgres and extra_float_digits 3, so that ValueJSON
// turns them into exactly what to_jsonb gives; rows are written with their
// members in the table's column order, as to_json writes them into the
// trigger log, keys from the primary key in its order (read from the
// catalog when a Relation message arrives, so that a table's columns may
// change mid-stream). A change therefore reads as the trigger source's,
// except:
//   - old is what the replica identity carries: the key for the default
//     identity (the old key on an update that changed it, the new key
//     otherwise), the whole row for REPLICA IDENTITY FULL;
//   - an unchanged TOASTed column of an update is filled from the old row
//     when the identity is FULL, and otherwise left out of New and named in
//     Change.Unchanged;
//   - CommitTime is the commit's own time; generated columns are not
//     published by PostgreSQL 15.
//
// One Batch per transaction, emitted at its commit. Its Tick.ID is the
// commit record's LSN and a change's Cursor is (commit LSN, 1-based position
// in the transaction): cursors follow commit order, and mean the same on
// every node decoding the same database with the same publication, even
// from another slot.
//
// What is confirmed to the slot, and why: the flush position sent in
// standby status updates (every StatusInterval, when a keepalive asks, and
// when a session ends: that last one waits for the server's answer, since
// closing a socket with unread data can make the server drop what it had
// not read yet) is never past what emit has returned for (the feed's
// Emit returns once the batch is in every matching queue and the history),
// nor past Keep: the start of the feed's in-memory history. So a pgfeed
// restarted on the same slot decodes its predecessor's history window again
// and can resume the same cursors; a client never misses a change that was
// acknowledged to the slot. Keeping that window costs WAL, so the position
// moves on regardless once the slot would keep more than MaxRetainedWAL
// (older cursors then get a reset after a restart, as they would from an
// expired history). Within a session, reconnecting starts from the position
// after the last emitted transaction (START_REPLICATION takes the larger of
// that and the slot's confirmed position), so nothing is emitted twice; a
// transaction cut off by a disconnection is decoded again whole.
//
// Goroutines: Run's own (receiving, decoding, emitting, status updates,
// in that one goroutine, so emit is never called concurrently) and one it
// starts and waits for that measures the slot's retained WAL every
// CheckEvery and warns when it passes MaxRetainedWAL.
//
// Locks: Logical.mu guards the positions (start, emitted, safe, confirmed,
// walEnd) and is never held while calling emit, Keep or the database.
package listener
