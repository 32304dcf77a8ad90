-- Retention and reports (docs/retention.md).
--
-- Finished instances older than their retention are purged with their events, after their
-- durations were folded into daily aggregates, so reports outlive the instances.

-- Daily aggregates of purged instances, by day of finish (UTC). status_name '' holds the
-- create-to-finish durations of the instances; any other name the durations from the previous
-- status (or the creation) to that status. buckets is a histogram of log-scaled buckets, defined by
-- statusek.core.report (bucket 0: under 1 ms; then 8 per doubling), trailing zeros left out.
CREATE TABLE report_daily (
    object_name   text             NOT NULL,
    day           date             NOT NULL,
    model_version integer          NOT NULL,
    finish_reason text             NOT NULL,
    status_name   text             NOT NULL,
    count         bigint           NOT NULL CHECK (count > 0),
    sum_seconds   double precision NOT NULL,
    min_seconds   double precision NOT NULL,
    max_seconds   double precision NOT NULL,
    buckets       bigint[]         NOT NULL,
    sla_breaches  bigint           NOT NULL DEFAULT 0,
    PRIMARY KEY (object_name, day, model_version, finish_reason, status_name)
);

-- Element-wise sum of two histograms of different lengths (the missing tail counts as zeros).
CREATE FUNCTION statusek_add_buckets(a bigint[], b bigint[]) RETURNS bigint[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(coalesce(x, 0) + coalesce(y, 0) ORDER BY i), '{}')
    FROM unnest(a, b) WITH ORDINALITY AS t(x, y, i)
$$;

-- The purger walks finished instances of one object by age; reports read them by finish time.
-- IF NOT EXISTS: on a large instances table, build it beforehand without blocking writes,
--     CREATE INDEX CONCURRENTLY instances_finished ON instances (object_name, finished_at)
--         WHERE finished_at IS NOT NULL;
-- and this migration keeps it.
CREATE INDEX IF NOT EXISTS instances_finished ON instances (object_name, finished_at)
    WHERE finished_at IS NOT NULL;
-- Notifications not yet sent keep their instance from being purged (and are looked up per batch).
CREATE INDEX IF NOT EXISTS outbox_instance_token ON outbox (instance_token);

-- Events stay append-only: UPDATE and TRUNCATE are always refused, DELETE too unless the
-- transaction-local flag statusek.purging is on, which only statusek_purge sets (for itself).
CREATE OR REPLACE FUNCTION statusek_events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('statusek.purging', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'statusek events are append-only: % is not allowed', TG_OP;
END
$$;

-- The one way out of the event log: delete finished instances with their events and any
-- notification not yet sent. SECURITY DEFINER: it runs as the owner (who migrates), so a worker role
-- granted only SELECT and INSERT on events (grants.sql) can purge through it and no other way.
-- Open instances are refused. It turns statusek.purging on for its own deletes only (transaction-
-- local, as SET LOCAL, and off again before it returns; an error rolls the setting back with the
-- rest), so nothing after it in the caller's transaction may delete. (A SET clause on the function
-- would be neater, but Postgres 15 lets only superusers attach an undeclared parameter to a
-- function.) Returns the number of instances deleted.
CREATE FUNCTION statusek_purge(tokens uuid[]) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
AS $$
DECLARE
    deleted bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM instances WHERE token = ANY (tokens) AND finished_at IS NULL) THEN
        RAISE EXCEPTION 'statusek_purge: only finished instances may be purged';
    END IF;
    PERFORM set_config('statusek.purging', 'on', true);
    DELETE FROM events WHERE instance_token = ANY (tokens);
    PERFORM set_config('statusek.purging', 'off', true);
    DELETE FROM outbox WHERE instance_token = ANY (tokens);
    DELETE FROM instances WHERE token = ANY (tokens);
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$;

-- A SECURITY DEFINER function must not resolve names through the caller's temporary schema:
-- pin its search_path to the schema it lives in, pg_temp last.
DO $$
BEGIN
    EXECUTE format(
        'ALTER FUNCTION statusek_purge(uuid[]) SET search_path = %I, pg_temp', current_schema()
    );
END
$$;

-- Functions are executable by PUBLIC unless revoked: only roles granted it may purge
-- (grants.sql gives it to the worker role).
REVOKE ALL ON FUNCTION statusek_purge(uuid[]) FROM PUBLIC;
