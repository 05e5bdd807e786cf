package listener

import (
	"context"
	"fmt"
)

// Log reads the stream back from the database, for clients resuming from a
// cursor older than what a server keeps in memory. Safe for concurrent use
// when DB is (a pool).
type Log struct {
	DB Querier
}

// Batch reads the batch of one tick (ErrTickGone when pruned).
func (l Log) Batch(ctx context.Context, tick int64) (Batch, error) {
	return ReadBatch(ctx, l.DB, tick)
}

// Oldest is the oldest resumable position (zero when there is no tick).
func (l Log) Oldest(ctx context.Context) (Cursor, error) { return Oldest(ctx, l.DB) }

// Newest is the newest tick's id, 0 when there is none.
func (l Log) Newest(ctx context.Context) (int64, error) {
	var id *int64
	if err := l.DB.QueryRow(ctx, `SELECT max(id) FROM pgfeed.ticks`).Scan(&id); err != nil {
		return 0, fmt.Errorf("newest tick: %w", err)
	}
	if id == nil {
		return 0, nil
	}
	return *id, nil
}
