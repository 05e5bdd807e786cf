-- pgfeed.tick(): cut a tick in one round trip.
--
-- The listener calls it on every read: as one statement it costs one round
-- trip, where BEGIN, the lock, the insert and COMMIT sent one by one cost
-- four. Each statement of a volatile plpgsql function takes a fresh
-- snapshot, so the insert's snapshot is taken after the lock is granted and
-- contains every earlier tick.

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION pgfeed.tick(OUT id bigint, OUT snapshot text, OUT created_at timestamptz, OUT created boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- The same lock as the listener's Go code took before this function
    -- existed (0x7067666565640001): ticks are cut one at a time.
    PERFORM pg_advisory_xact_lock(8099555040527908865);
    WITH last AS (SELECT t.id, t.snapshot FROM pgfeed.ticks t ORDER BY t.id DESC LIMIT 1)
    INSERT INTO pgfeed.ticks (id, snapshot)
    SELECT coalesce((SELECT l.id FROM last l), 0) + 1, pg_current_snapshot()
     WHERE NOT EXISTS (SELECT 1 FROM last)
        -- A committed change the newest tick does not see: from a
        -- transaction that started after it, or was running at it. (Two
        -- index probes; txid >= its xmin would scan everything written
        -- since the oldest open transaction began.)
        OR EXISTS (SELECT 1 FROM pgfeed.changes c, last l
                    WHERE c.txid >= pg_snapshot_xmax(l.snapshot))
        OR EXISTS (SELECT 1 FROM pgfeed.changes c, last l
                    WHERE c.txid = ANY (ARRAY(SELECT pg_snapshot_xip(l.snapshot))))
    RETURNING ticks.id, ticks.snapshot::text, ticks.created_at INTO id, snapshot, created_at;
    created := FOUND;
    IF NOT created THEN
        SELECT t.id, t.snapshot::text, t.created_at INTO id, snapshot, created_at
          FROM pgfeed.ticks t ORDER BY t.id DESC LIMIT 1;
    END IF;
END $$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION pgfeed.tick();
