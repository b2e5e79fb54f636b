CREATE SCHEMA sched;
CREATE TABLE sched.outbox (
  seq BIGSERIAL NOT NULL,
  id UUID PRIMARY KEY,
  subject TEXT NOT NULL,
  payload BYTEA NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX sched_outbox_seq ON sched.outbox (seq);
CREATE TABLE sched.inbox (
  msg_id TEXT PRIMARY KEY,
  processed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE sched.cycles (
  id UUID PRIMARY KEY,
  trigger TEXT NOT NULL,
  -- A cron tick fires one cycle however many replicas see it.
  scheduled_for TIMESTAMPTZ UNIQUE,
  state TEXT NOT NULL DEFAULT 'running',
  started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  finished_at TIMESTAMPTZ,
  collection_started BOOLEAN NOT NULL DEFAULT false,
  devices INT NOT NULL DEFAULT 0,
  devices_ok INT NOT NULL DEFAULT 0,
  devices_failed INT NOT NULL DEFAULT 0,
  devices_with_reports INT NOT NULL DEFAULT 0,
  reports_stored INT NOT NULL DEFAULT 0,
  reports_quarantined INT NOT NULL DEFAULT 0,
  reports_duplicate INT NOT NULL DEFAULT 0,
  reports_uploaded INT NOT NULL DEFAULT 0,
  reports_upload_failed INT NOT NULL DEFAULT 0,
  devices_upload_failed INT NOT NULL DEFAULT 0,
  batches INT NOT NULL DEFAULT 0,
  acks_imported INT NOT NULL DEFAULT 0,
  acks_failed INT NOT NULL DEFAULT 0
);
CREATE TABLE sched.cycle_failures (
  cycle_id UUID NOT NULL,
  device_id UUID NOT NULL,
  stage TEXT NOT NULL,
  reason TEXT NOT NULL,
  at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (cycle_id, device_id, stage)
);
