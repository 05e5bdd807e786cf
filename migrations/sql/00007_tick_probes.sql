-- pgfeed.tick(): find news in the change log with index probes only.
--
-- 00003 joined the change log to the newest tick inside EXISTS; the planner
-- saw "txid >= a value from a join" and scanned the whole log, newest rows
-- last: a tick cost grew with everything retained (9 ms at 53,000 log rows,
-- on every read of the listener). Taking the newest tick into variables
-- first makes the probes plain comparisons with parameters: the newest
-- committed txid is max() over the txid index, one probe from its end, and
-- each transaction that was running at the tick is one equality probe (as
-- "= ANY (array)" the planner expects a match early and scans instead).

-- +goose Up
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION pgfeed.tick(OUT id bigint, OUT snapshot text, OUT created_at timestamptz, OUT created boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    last_id bigint;
    last_snapshot pg_snapshot;
    last_at timestamptz;
    news boolean;
    running xid8;
BEGIN
    -- The same lock as the listener's Go code took before this function
    -- existed (0x7067666565640001): ticks are cut one at a time. Each
    -- statement below takes a fresh snapshot, after the lock is granted,
    -- so it sees every earlier tick.
    PERFORM pg_advisory_xact_lock(8099555040527908865);
    SELECT t.id, t.snapshot, t.created_at INTO last_id, last_snapshot, last_at
      FROM pgfeed.ticks t ORDER BY t.id DESC LIMIT 1;
    -- A committed change the newest tick does not see: from a transaction
    -- that started after it, or was running at it.
    news := last_id IS NULL
            OR (SELECT max(c.txid) FROM pgfeed.changes c) >= pg_snapshot_xmax(last_snapshot);
    IF NOT news THEN
        FOR running IN SELECT pg_snapshot_xip(last_snapshot) LOOP
            news := EXISTS (SELECT 1 FROM pgfeed.changes c WHERE c.txid = running);
            EXIT WHEN news;
        END LOOP;
    END IF;
    IF news THEN
        INSERT INTO pgfeed.ticks (id, snapshot)
        VALUES (coalesce(last_id, 0) + 1, pg_current_snapshot())
        RETURNING ticks.id, ticks.snapshot::text, ticks.created_at INTO id, snapshot, created_at;
        created := true;
    ELSE
        id := last_id;
        snapshot := last_snapshot::text;
        created_at := last_at;
        created := false;
    END IF;
END $$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION pgfeed.tick(OUT id bigint, OUT snapshot text, OUT created_at timestamptz, OUT created boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(8099555040527908865);
    WITH last AS (SELECT t.id, t.snapshot FROM pgfeed.ticks t ORDER BY t.id DESC LIMIT 1)
    INSERT INTO pgfeed.ticks (id, snapshot)
    SELECT coalesce((SELECT l.id FROM last l), 0) + 1, pg_current_snapshot()
     WHERE NOT EXISTS (SELECT 1 FROM last)
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
