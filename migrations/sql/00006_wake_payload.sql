-- pgfeed.wake: the NOTIFY carries the writer's transaction id.
--
-- A NOTIFY is delivered after its transaction commits, so it often reaches
-- the listener after the read that already found the transaction's changes.
-- With the id, the listener sees that the changes were emitted (the id is in
-- the snapshot of the tick it read up to) and does not cut a tick for
-- nothing. Payloads of different transactions differ anyway: each
-- transaction sends at most one NOTIFY.

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
            PERFORM pg_notify('pgfeed', '');
        END IF;
    END IF;
END $$;
-- +goose StatementEnd
