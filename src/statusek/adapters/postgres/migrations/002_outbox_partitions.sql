-- Outbox rows are spread over partitions by instance, so relays of several
-- replicas publish in parallel while each instance's rows stay in one
-- partition, sent by one relay at a time, oldest first.
ALTER TABLE outbox ADD COLUMN partition smallint NOT NULL DEFAULT 0;
CREATE INDEX outbox_partition_order ON outbox (partition, id);
