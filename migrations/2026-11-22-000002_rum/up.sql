CREATE SCHEMA rum;
CREATE TABLE rum.outbox (
  seq BIGSERIAL NOT NULL,
  id UUID PRIMARY KEY,
  subject TEXT NOT NULL,
  payload BYTEA NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX rum_outbox_seq ON rum.outbox (seq);
CREATE TABLE rum.inbox (
  msg_id TEXT PRIMARY KEY,
  processed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Projection of inventory's devices, kept from its events.
CREATE TABLE rum.devices (
  id UUID PRIMARY KEY,
  udi_pid TEXT NOT NULL,
  udi_serial TEXT NOT NULL,
  hostname TEXT NOT NULL,
  base_url TEXT NOT NULL,
  smart_account TEXT NOT NULL,
  virtual_account TEXT NOT NULL,
  username TEXT NOT NULL,
  password_sealed TEXT NOT NULL,
  revision BIGINT NOT NULL,
  deleted BOOLEAN NOT NULL DEFAULT false
);
-- Durable queue: one row per device to collect in a cycle.
CREATE TABLE rum.collections (
  cycle_id UUID NOT NULL,
  device_id UUID NOT NULL,
  state TEXT NOT NULL DEFAULT 'pending',
  attempts INT NOT NULL DEFAULT 0,
  lease_until TIMESTAMPTZ,
  error TEXT,
  reports_new INT NOT NULL DEFAULT 0,
  finished_at TIMESTAMPTZ,
  PRIMARY KEY (cycle_id, device_id)
);
CREATE INDEX collections_pending ON rum.collections (cycle_id) WHERE state = 'pending';
-- Reports exactly as received; (udi, report_id) is the identity CSSM dedupes on.
CREATE TABLE rum.reports (
  udi_pid TEXT NOT NULL,
  udi_serial TEXT NOT NULL,
  report_id BIGINT NOT NULL,
  device_id UUID NOT NULL,
  cycle_id UUID,
  entitlement_tag TEXT NOT NULL,
  software_version TEXT NOT NULL,
  usage_count BIGINT NOT NULL,
  end_time BIGINT NOT NULL,
  body BYTEA NOT NULL,
  received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (udi_pid, udi_serial, report_id)
);
CREATE INDEX reports_device ON rum.reports (device_id);
CREATE TABLE rum.quarantine (
  id BIGSERIAL PRIMARY KEY,
  device_id UUID,
  cycle_id UUID,
  reason TEXT NOT NULL,
  body BYTEA NOT NULL,
  received_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Durable queue of ACKs to install on devices.
CREATE TABLE rum.ack_imports (
  id UUID PRIMARY KEY,
  device_id UUID NOT NULL,
  cycle_id UUID,
  report_ids BIGINT[] NOT NULL,
  ack TEXT NOT NULL,
  state TEXT NOT NULL DEFAULT 'pending',
  attempts INT NOT NULL DEFAULT 0,
  lease_until TIMESTAMPTZ,
  error TEXT,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  finished_at TIMESTAMPTZ
);
CREATE INDEX ack_imports_pending ON rum.ack_imports (created_at) WHERE state = 'pending';
CREATE INDEX ack_imports_device ON rum.ack_imports (device_id);
