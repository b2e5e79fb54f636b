DROP TABLE uplink.unmatched_acks;
ALTER TABLE uplink.batches DROP COLUMN error_class, DROP COLUMN retried_at, DROP COLUMN poll_id_numeric;
