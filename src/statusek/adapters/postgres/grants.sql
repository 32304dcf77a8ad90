-- The privileges of statusek's worker role: what `statusek worker` needs, and nothing more.
--
-- `statusek migrate --grant ROLE` runs this file as the owner role (the one that migrates), in one
-- transaction, after migrating; so does
--
--     psql "$OWNER_URL" -1 -v ON_ERROR_STOP=1 -v role=statusek_worker -v schema=public \
--          -v database=statusek -f grants.sql
--
-- :"role" is the worker's role (it must exist: CREATE ROLE statusek_worker LOGIN PASSWORD '...'),
-- :"schema" the schema holding statusek's tables, :"database" their database (:'...' the same, as
-- a string literal).
--
-- Running it again is harmless, and needed after a migration adds a table: the grants name every
-- table of the schema at the time they run (no default privileges, which would give a future
-- append-only table UPDATE and DELETE before anybody looked at it). Everything is first revoked, so
-- the role ends up with exactly this list whatever it held before. Privileges the role has through
-- PUBLIC or through another role's membership are not touched; `statusek migrate --grant` reports
-- a CREATE left that way.
--
-- The worker role gets:
--   database    CONNECT (PUBLIC usually has it; granted so that revoking it from PUBLIC is safe)
--   schema      USAGE, never CREATE: no tables, views or functions of its own
--   tables      SELECT, INSERT, UPDATE, DELETE; no TRUNCATE, REFERENCES, TRIGGER
--   events      SELECT and INSERT only: the event log is append-only by grant, not only by its
--               trigger; so is every table with that trigger
--   schema_migrations   SELECT only: the worker checks the schema is current, the owner migrates
--   sequences   USAGE and SELECT (nextval for bigserial ids); no UPDATE (setval)
--   functions   EXECUTE
-- It owns nothing, so it can neither ALTER nor DROP anything.

REVOKE CREATE ON DATABASE :"database" FROM :"role";
GRANT CONNECT ON DATABASE :"database" TO :"role";

REVOKE ALL ON SCHEMA :"schema" FROM :"role";
GRANT USAGE ON SCHEMA :"schema" TO :"role";

REVOKE ALL ON ALL TABLES IN SCHEMA :"schema" FROM :"role";
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA :"schema" TO :"role";
REVOKE UPDATE, DELETE ON TABLE :"schema".events FROM :"role";
REVOKE INSERT, UPDATE, DELETE ON TABLE :"schema".schema_migrations FROM :"role";

-- Every append-only table, events and any later log alike (a trigger of theirs calls
-- statusek_events_are_append_only), is SELECT and INSERT only. A DO block cannot read psql
-- variables, so the role and schema reach it as settings of this session.
SELECT set_config('statusek.grant_role', :'role', false),
       set_config('statusek.grant_schema', :'schema', false);
DO $$
DECLARE
    log_table regclass;
BEGIN
    FOR log_table IN
        SELECT DISTINCT t.tgrelid::regclass
        FROM pg_trigger t
        JOIN pg_proc p ON p.oid = t.tgfoid
        JOIN pg_class c ON c.oid = t.tgrelid
        WHERE p.proname = 'statusek_events_are_append_only'
          AND c.relnamespace = current_setting('statusek.grant_schema')::regnamespace
    LOOP
        EXECUTE format('REVOKE UPDATE, DELETE ON TABLE %s FROM %I',
                       log_table, current_setting('statusek.grant_role'));
    END LOOP;
END
$$;

REVOKE ALL ON ALL SEQUENCES IN SCHEMA :"schema" FROM :"role";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA :"schema" TO :"role";

-- Functions: EXECUTE on all of the schema's, among them those PUBLIC may not run, such as a
-- SECURITY DEFINER function that is the worker's only way to do what its grants refuse (purging
-- finished instances with their events). A function meant for the owner alone belongs elsewhere.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA :"schema" FROM :"role";
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA :"schema" TO :"role";
