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
-- Refuse while tables are captured: their cursors name ticks, and ticks cut
-- anew from 1 after an Up would give old cursors other changes. (The same
-- check as 00001's Down, written out: no function of a later migration is
-- left when this one is rolled back.)
-- +goose StatementBegin
DO $$
DECLARE
    captured text;
BEGIN
    SELECT string_agg(DISTINCT format('%s', t.tgrelid::regclass), ', ') INTO captured
      FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
      JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE n.nspname = 'pgfeed';
    IF captured IS NOT NULL THEN
        RAISE EXCEPTION 'pgfeed capture is still enabled on %, whose cursors name the ticks this would drop; run "pgfeed triggers disable" on them first', captured;
    END IF;
END $$;
-- +goose StatementEnd
DROP TABLE pgfeed.ticks;
