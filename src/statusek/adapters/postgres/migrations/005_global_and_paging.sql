-- Global statuses: named events of no instance, one append-only log numbered 1, 2, 3 ... without
-- gaps. The counter row is the log's state: a command window locks it (after its instances) and
-- advances it, so seqs are given and committed in one order and a reader paging by seq never
-- skips an event that commits later.
CREATE TABLE global_events (
    seq         bigint      PRIMARY KEY CHECK (seq > 0),
    status_name text        NOT NULL,
    message     text,
    occurred_at timestamptz NOT NULL,
    actor       text,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX global_events_by_name ON global_events (status_name, seq);
CREATE TRIGGER global_events_no_update_or_delete BEFORE UPDATE OR DELETE ON global_events
    FOR EACH ROW EXECUTE FUNCTION statusek_events_are_append_only();
CREATE TRIGGER global_events_no_truncate BEFORE TRUNCATE ON global_events
    FOR EACH STATEMENT EXECUTE FUNCTION statusek_events_are_append_only();

CREATE TABLE global_event_counter (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    last_seq bigint  NOT NULL
);
INSERT INTO global_event_counter (only_row, last_seq) VALUES (true, 0);

-- A global status's notification belongs to no instance (it goes to outbox partition 0).
ALTER TABLE outbox ALTER COLUMN instance_token DROP NOT NULL;

-- find-instances: keyset pages in (created_at, token) order, narrowed by object, open instances
-- or labels (labels @> '{"k": "v"}'). IF NOT EXISTS: on a large table an operator may build them
-- beforehand with CREATE INDEX CONCURRENTLY (these statements block writes while they build).
CREATE INDEX IF NOT EXISTS instances_created ON instances (created_at, token);
CREATE INDEX IF NOT EXISTS instances_object_created ON instances (object_name, created_at, token);
CREATE INDEX IF NOT EXISTS instances_open_created ON instances (created_at, token) WHERE finished_at IS NULL;
CREATE INDEX IF NOT EXISTS instances_labels ON instances USING gin (labels jsonb_path_ops);
