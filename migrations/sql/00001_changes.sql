-- pgfeed's change log and the generic capture functions.
--
-- Every captured table gets triggers (see package triggers) that call the
-- functions below; they write one row per changed row to pgfeed.changes and
-- wake the listeners. Nothing here touches an application table.

-- +goose Up
CREATE TABLE pgfeed.changes (
    -- Taken when the row is written, so it orders the changes of one row
    -- (a later change of a row always has the larger seq) but not commits.
    seq         bigint GENERATED ALWAYS AS IDENTITY,
    -- The writing transaction; with snapshots this tells which changes have
    -- committed and in which batch a reader sees them.
    txid        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    schema_name text        NOT NULL,
    table_name  text        NOT NULL,
    op          text        NOT NULL CHECK (op IN ('insert', 'update', 'delete', 'truncate')),
    key         jsonb,
    new         jsonb,
    old         jsonb,
    captured_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE pgfeed.changes IS 'pgfeed: one row per captured row change, read by the listener in commit order and pruned after the retention period.';

-- Readers select by transaction id range; pruning deletes below a txid.
-- Deliberately the only index: every index is paid by the application's writes.
CREATE INDEX changes_txid_idx ON pgfeed.changes (txid);

-- One row per running pgfeed listener. While every listener is awake (reading
-- continuously), writers skip the NOTIFY, which would otherwise serialize
-- their commits.
CREATE TABLE pgfeed.listeners (
    node        text PRIMARY KEY,
    awake_until timestamptz NOT NULL,
    -- Heartbeat: a row not seen for a while belongs to a listener that died,
    -- and is removed so that it does not keep writers notifying.
    seen_at     timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE pgfeed.listeners IS 'pgfeed: listeners that are awake until the given time; writers skip NOTIFY while all are.';

-- pgfeed.wake sends at most one NOTIFY per transaction on channel pgfeed,
-- and none while every listener says it is awake.
-- +goose StatementBegin
CREATE FUNCTION pgfeed.wake() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_setting('pgfeed.woken', true) IS DISTINCT FROM 'on' THEN
        -- Transaction-local: reset at commit or rollback (and with a
        -- rolled-back savepoint, together with the NOTIFY it discards).
        PERFORM set_config('pgfeed.woken', 'on', true);
        IF coalesce((SELECT min(l.awake_until) FROM pgfeed.listeners l) <= clock_timestamp(), true) THEN
            PERFORM pg_notify('pgfeed', '');
        END IF;
    END IF;
END $$;
-- +goose StatementEnd

-- The key of a row: the columns named as trigger arguments (the primary key
-- at the time capture was enabled), taken from the row's jsonb.
-- +goose StatementBegin
CREATE FUNCTION pgfeed.key_of(row_json jsonb, columns text[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN cardinality(columns) = 1
                THEN jsonb_build_object(columns[1], row_json -> columns[1])
                ELSE (SELECT jsonb_object_agg(c, row_json -> c) FROM unnest(columns) AS c)
           END
$$;
-- +goose StatementEnd

-- The capture functions render rows in UTC (SET timezone): to_jsonb writes
-- timestamptz values in the session's time zone, and a change must read the
-- same whichever session wrote it.

-- INSERT: a statement-level trigger with a transition table, so a bulk insert
-- writes its log rows in one set-based statement.
-- +goose StatementBegin
CREATE FUNCTION pgfeed.capture_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET timezone = 'UTC' AS $$
BEGIN
    INSERT INTO pgfeed.changes (schema_name, table_name, op, key, new)
    SELECT TG_TABLE_SCHEMA, TG_TABLE_NAME, 'insert',
           CASE WHEN TG_NARGS = 1 THEN jsonb_build_object(TG_ARGV[0], r.j -> TG_ARGV[0])
                ELSE pgfeed.key_of(r.j, TG_ARGV) END,
           r.j
      FROM (SELECT to_jsonb(n) AS j FROM pgfeed_new_rows n OFFSET 0) AS r;
    IF FOUND THEN
        PERFORM pgfeed.wake();
    END IF;
    RETURN NULL;
END $$;
-- +goose StatementEnd

-- Row-level capture: always for UPDATE, because a statement's old and new
-- transition rows are not paired by anything PostgreSQL guarantees; for
-- INSERT and DELETE too on partitions and inheritance children, whose
-- statement-level triggers do not fire when rows are written through the
-- parent.
-- +goose StatementBegin
CREATE FUNCTION pgfeed.capture_row() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET timezone = 'UTC' AS $$
DECLARE
    n jsonb;
    o jsonb;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        o := to_jsonb(OLD);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        n := to_jsonb(NEW);
    END IF;
    INSERT INTO pgfeed.changes (schema_name, table_name, op, key, new, old)
    VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, lower(TG_OP),
            CASE WHEN TG_NARGS = 1 THEN jsonb_build_object(TG_ARGV[0], coalesce(n, o) -> TG_ARGV[0])
                 ELSE pgfeed.key_of(coalesce(n, o), TG_ARGV) END,
            n, o);
    IF current_setting('pgfeed.woken', true) IS DISTINCT FROM 'on' THEN
        PERFORM pgfeed.wake();
    END IF;
    RETURN NULL;
END $$;
-- +goose StatementEnd

-- DELETE: statement-level with a transition table, like INSERT.
-- +goose StatementBegin
CREATE FUNCTION pgfeed.capture_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET timezone = 'UTC' AS $$
BEGIN
    INSERT INTO pgfeed.changes (schema_name, table_name, op, key, old)
    SELECT TG_TABLE_SCHEMA, TG_TABLE_NAME, 'delete',
           CASE WHEN TG_NARGS = 1 THEN jsonb_build_object(TG_ARGV[0], r.j -> TG_ARGV[0])
                ELSE pgfeed.key_of(r.j, TG_ARGV) END,
           r.j
      FROM (SELECT to_jsonb(o) AS j FROM pgfeed_old_rows o OFFSET 0) AS r;
    IF FOUND THEN
        PERFORM pgfeed.wake();
    END IF;
    RETURN NULL;
END $$;
-- +goose StatementEnd

-- TRUNCATE: one log row for the statement.
-- +goose StatementBegin
CREATE FUNCTION pgfeed.capture_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO pgfeed.changes (schema_name, table_name, op)
    VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, 'truncate');
    PERFORM pgfeed.wake();
    RETURN NULL;
END $$;
-- +goose StatementEnd

-- +goose Down
-- Refuse, with a sentence a DBA can act on, while tables still use the
-- capture functions: dropping them would drop the application's triggers.
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
        RAISE EXCEPTION 'pgfeed capture is still enabled on %; run "pgfeed triggers disable" on them first', captured;
    END IF;
END $$;
-- +goose StatementEnd
DROP FUNCTION pgfeed.capture_truncate();
DROP FUNCTION pgfeed.capture_delete();
DROP FUNCTION pgfeed.capture_row();
DROP FUNCTION pgfeed.capture_insert();
DROP FUNCTION pgfeed.key_of(jsonb, text[]);
DROP FUNCTION pgfeed.wake();
DROP TABLE pgfeed.listeners;
DROP TABLE pgfeed.changes;
