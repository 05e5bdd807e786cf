-- pgfeed.awake_until: the writers' check, one sequence read.
--
-- pgfeed.wake() looked for a listener that is not reading with a query of
-- pgfeed.listeners on every captured transaction (about 4% of a single-row
-- INSERT's time, measured with pgbench). The listeners' earliest promise
-- now also lives in a sequence, as milliseconds since the epoch (0: some
-- listener is not reading, or there is none), kept up to date by a trigger
-- on pgfeed.listeners; wake() reads it with pg_sequence_last_value, a plain
-- expression.
--
-- A sequence is read outside any snapshot, so a writer under REPEATABLE
-- READ or SERIALIZABLE sees a withdrawn promise as soon as a READ COMMITTED
-- one does: its transaction id was assigned (by its change) before it read
-- the promise, so a listener that withdrew the promise after that read
-- drains it. wake() no longer needs to NOTIFY for every such writer.
-- Changes to pgfeed.listeners take a lock, so that the trigger of one
-- always sees the others' committed rows.

-- +goose Up
CREATE SEQUENCE pgfeed.awake_until AS bigint MINVALUE 0 START 0;
COMMENT ON SEQUENCE pgfeed.awake_until IS 'pgfeed: the earliest pgfeed.listeners.awake_until, in ms since the epoch (0: some listener is not reading)';

-- +goose StatementBegin
CREATE FUNCTION pgfeed.listeners_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    earliest timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock(8099555040527908867); -- 0x7067666565640003
    SELECT min(l.awake_until) INTO earliest FROM pgfeed.listeners l;
    PERFORM setval('pgfeed.awake_until', CASE
        WHEN earliest IS NULL OR earliest = '-infinity' THEN 0
        WHEN earliest = 'infinity' THEN 9223372036854775807
        ELSE greatest(0, floor(extract(epoch FROM earliest) * 1000))::bigint
    END);
    RETURN NULL;
END $$;
-- +goose StatementEnd

CREATE TRIGGER listeners_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pgfeed.listeners
FOR EACH STATEMENT EXECUTE FUNCTION pgfeed.listeners_changed();
UPDATE pgfeed.listeners SET awake_until = awake_until WHERE false;

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION pgfeed.wake() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_setting('pgfeed.woken', true) IS DISTINCT FROM 'on' THEN
        -- Transaction-local: reset at commit or rollback (and with a
        -- rolled-back savepoint, together with the NOTIFY it discards).
        PERFORM set_config('pgfeed.woken', 'on', true);
        IF coalesce(pg_sequence_last_value('pgfeed.awake_until'::regclass), 0)
           <= (extract(epoch FROM clock_timestamp()) * 1000)::bigint THEN
            PERFORM pg_notify('pgfeed', pg_current_xact_id()::text);
        END IF;
    END IF;
END $$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION pgfeed.wake() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_setting('pgfeed.woken', true) IS DISTINCT FROM 'on' THEN
        PERFORM set_config('pgfeed.woken', 'on', true);
        IF current_setting('transaction_isolation') <> 'read committed'
           OR coalesce((SELECT min(l.awake_until) FROM pgfeed.listeners l) <= clock_timestamp(), true) THEN
            PERFORM pg_notify('pgfeed', pg_current_xact_id()::text);
        END IF;
    END IF;
END $$;
-- +goose StatementEnd
DROP TRIGGER listeners_changed ON pgfeed.listeners;
DROP FUNCTION pgfeed.listeners_changed();
DROP SEQUENCE pgfeed.awake_until;
