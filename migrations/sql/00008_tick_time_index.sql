-- An index on pgfeed.ticks(created_at): pruning finds the newest tick past
-- the retention period with one probe, where it scanned every tick of the
-- retention period (one per read of a busy listener: millions a day).
-- Built concurrently: a big ticks table must not stop the listeners.

-- +goose NO TRANSACTION
-- +goose Up
CREATE INDEX CONCURRENTLY IF NOT EXISTS ticks_created_at_idx ON pgfeed.ticks (created_at);

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS pgfeed.ticks_created_at_idx;
