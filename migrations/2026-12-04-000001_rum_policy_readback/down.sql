DROP TABLE rum.device_policies;
ALTER TABLE rum.ack_imports
  DROP COLUMN confirmation,
  DROP COLUMN confirmation_reason,
  DROP COLUMN ack_received_before,
  DROP COLUMN ack_received_after;
