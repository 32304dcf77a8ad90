-- Notifications that the pipeline which committed them publishes itself, straight after its
-- commit, then deletes (docs/guarantees.md, "Outbox"). The relays leave such a row alone for a grace period
-- counted from created_at (its pipeline is publishing it) and send it afterwards, as any other:
-- its pipeline died or failed. Adding a column with a constant default rewrites nothing.
ALTER TABLE outbox ADD COLUMN direct boolean NOT NULL DEFAULT false;
