-- Why a batch failed (transient errors keep it in line; permanent ones and duplicates end it),
-- when the operator put a failed batch's reports back in line, and the JSON type of CSSM's
-- poll_id (a number is sent back as a number).
ALTER TABLE uplink.batches
  ADD COLUMN error_class TEXT,
  ADD COLUMN retried_at TIMESTAMPTZ,
  ADD COLUMN poll_id_numeric BOOLEAN NOT NULL DEFAULT false;
-- ACK entries CSSM returned that match no device of their batch: kept, never dropped.
CREATE TABLE uplink.unmatched_acks (
  id UUID PRIMARY KEY,
  batch_id UUID NOT NULL,
  udi_pid TEXT,
  udi_serial TEXT,
  report_ids BIGINT[] NOT NULL,
  ack TEXT NOT NULL,
  reason TEXT NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX uplink_unmatched_acks_batch ON uplink.unmatched_acks (batch_id);
