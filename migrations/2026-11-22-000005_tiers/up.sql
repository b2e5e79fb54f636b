CREATE SCHEMA tiers;
CREATE TABLE tiers.outbox (
  seq BIGSERIAL NOT NULL,
  id UUID PRIMARY KEY,
  subject TEXT NOT NULL,
  payload BYTEA NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX tiers_outbox_seq ON tiers.outbox (seq);
CREATE TABLE tiers.inbox (
  msg_id TEXT PRIMARY KEY,
  processed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
