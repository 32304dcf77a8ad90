-- Model versions: immutable once written; instances point at the version they were created with.
CREATE TABLE model_versions (
    object_name text        NOT NULL,
    version     integer     NOT NULL,
    digest      text        NOT NULL,
    definition  jsonb       NOT NULL,
    loaded_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (object_name, version)
);

-- The projection of each instance's events, kept so a command reads one row.
CREATE TABLE instances (
    token              uuid             PRIMARY KEY,
    object_name        text             NOT NULL,
    model_version      integer          NOT NULL,
    labels             jsonb            NOT NULL,
    create_args        jsonb            NOT NULL,
    created_at         timestamptz      NOT NULL,
    instance_deadline  timestamptz,
    heartbeat_timeout  double precision,
    heartbeat_deadline timestamptz,
    -- min(instance_deadline, heartbeat_deadline) while open, NULL once finished:
    -- the sweeper's index covers open instances with a deadline and nothing else.
    next_deadline      timestamptz,
    statuses           text[]           NOT NULL,
    last_seq           integer          NOT NULL,
    finished_at        timestamptz,
    finish_reason      text,
    FOREIGN KEY (object_name, model_version) REFERENCES model_versions
);
CREATE INDEX instances_next_deadline ON instances (next_deadline) WHERE next_deadline IS NOT NULL;

-- The event log: append-only, one row per event, seq 1, 2, 3 ... per instance.
CREATE TABLE events (
    instance_token uuid        NOT NULL REFERENCES instances,
    seq            integer     NOT NULL CHECK (seq > 0),
    kind           text        NOT NULL,
    occurred_at    timestamptz NOT NULL,
    status_name    text,
    status_type    text,
    message        text,
    code           integer,
    reason         text,
    recorded_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (instance_token, seq)
);

CREATE FUNCTION statusek_events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'statusek events are append-only: % is not allowed', TG_OP;
END
$$;
CREATE TRIGGER events_no_update_or_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION statusek_events_are_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION statusek_events_are_append_only();

-- Notifications written in the same transaction as their events; the relay
-- publishes them with confirms and deletes them, oldest first.
CREATE TABLE outbox (
    id             bigserial   PRIMARY KEY,
    message_id     text        NOT NULL,
    type           text        NOT NULL,
    instance_token uuid        NOT NULL,
    body           jsonb       NOT NULL,
    headers        jsonb       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- Idempotency: a message_id seen before gets its stored reply and no new effect.
CREATE TABLE processed_messages (
    message_id   text        PRIMARY KEY,
    reply        jsonb       NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX processed_messages_age ON processed_messages (processed_at);
