// Package listener reads captured changes out of PostgreSQL and emits them
// as one ordered stream: from the trigger log (pgfeed.changes, woken by
// NOTIFY on channel "pgfeed") or, later, from logical replication.
//
// It owns the cursor: the position in the stream that clients resume from,
// which must mean the same position on every pgfeed node serving a database.
// It knows nothing about clients or HTTP.
//
// Status: the trigger log and its wake-up protocol exist (package migrations:
// pgfeed.changes, pgfeed.listeners, pgfeed.wake); the reader that turns them
// into an ordered, exactly-once stream is the next piece of work (the live
// feed). This package has no code yet.
package listener
