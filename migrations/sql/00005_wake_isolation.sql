-- pgfeed.wake: a writer above READ COMMITTED always sends its NOTIFY.
--
-- A writer skips the NOTIFY when pgfeed.listeners says every listener is
-- reading, and a listener that stops reading drains every transaction whose
-- id is older than its withdrawal. Under READ COMMITTED the check reads a
-- fresh snapshot, taken after the writer's transaction id was assigned, so
-- a writer that saw the promise is one the drain waits for. Under
-- REPEATABLE READ or SERIALIZABLE it reads the transaction's first
-- snapshot, which may predate the withdrawal while the id is assigned after
-- it: such a writer would skip the NOTIFY with no drain covering it, and
-- its change would wait for the listener's poll.

-- +goose Up
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION pgfeed.wake() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_setting('pgfeed.woken', true) IS DISTINCT FROM 'on' THEN
        -- Transaction-local: reset at commit or rollback (and with a
        -- rolled-back savepoint, together with the NOTIFY it discards).
        PERFORM set_config('pgfeed.woken', 'on', true);
        IF current_setting('transaction_isolation') <> 'read committed'
           OR coalesce((SELECT min(l.awake_until) FROM pgfeed.listeners l) <= clock_timestamp(), true) THEN
            PERFORM pg_notify('pgfeed', '');
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
        IF coalesce((SELECT min(l.awake_until) FROM pgfeed.listeners l) <= clock_timestamp(), true) THEN
            PERFORM pg_notify('pgfeed', '');
        END IF;
    END IF;
END $$;
-- +goose StatementEnd
