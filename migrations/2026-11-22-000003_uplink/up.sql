CREATE SCHEMA uplink;
CREATE TABLE uplink.outbox (
  seq BIGSERIAL NOT NULL,
  id UUID PRIMARY KEY,
  subject TEXT NOT NULL,
  payload BYTEA NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX uplink_outbox_seq ON uplink.outbox (seq);
CREATE TABLE uplink.inbox (
  msg_id TEXT PRIMARY KEY,
  processed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE uplink.reports (
  udi_pid TEXT NOT NULL,
  udi_serial TEXT NOT NULL,
  report_id BIGINT NOT NULL,
  device_id UUID NOT NULL,
  cycle_id UUID,
  smart_account TEXT NOT NULL,
  virtual_account TEXT NOT NULL,
  body BYTEA NOT NULL,
  state TEXT NOT NULL DEFAULT 'pending',
  batch_id UUID,
  error TEXT,
  received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (udi_pid, udi_serial, report_id)
);
CREATE INDEX uplink_reports_pending ON uplink.reports (smart_account, virtual_account, received_at) WHERE state = 'pending';
CREATE INDEX uplink_reports_batch ON uplink.reports (batch_id);
CREATE TABLE uplink.batches (
  id UUID PRIMARY KEY,
  mode TEXT NOT NULL,
  smart_account TEXT NOT NULL,
  virtual_account TEXT NOT NULL,
  nonce TEXT NOT NULL,
  state TEXT NOT NULL,
  poll_id TEXT,
  attempts INT NOT NULL DEFAULT 0,
  next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  error TEXT,
  reports INT NOT NULL,
  devices INT NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX batches_active ON uplink.batches (next_attempt_at) WHERE state IN ('new', 'polling');
CREATE TABLE uplink.acks (
  batch_id UUID NOT NULL,
  device_id UUID NOT NULL,
  report_ids BIGINT[] NOT NULL,
  ack TEXT NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (batch_id, device_id)
);
