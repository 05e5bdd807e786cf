-- Ticks: the positions of pgfeed's ordered change stream.
--
-- A tick records a snapshot. The batch of tick N is every change whose
-- transaction is visible in tick N's snapshot but not in tick N-1's, so
-- batches follow commit order, and every node that reads the same ticks cuts
-- the stream at the same places: a cursor (tick, position) means the same
-- change on every node. Ticks are created one at a time (an advisory lock in
-- pgfeed's listener), so a later tick's snapshot always contains an earlier
-- one's.

-- +goose Up
CREATE TABLE pgfeed.ticks (
    id         bigint PRIMARY KEY,
    snapshot   pg_snapshot NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
COMMENT ON TABLE pgfeed.ticks IS 'pgfeed: stream positions; a batch is the transactions committed between two consecutive ticks.';

-- +goose Down
DROP TABLE pgfeed.ticks;
