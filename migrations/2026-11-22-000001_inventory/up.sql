CREATE SCHEMA inventory;
CREATE TABLE inventory.outbox (
  seq BIGSERIAL NOT NULL,
  id UUID PRIMARY KEY,
  subject TEXT NOT NULL,
  payload BYTEA NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX inventory_outbox_seq ON inventory.outbox (seq);
CREATE TABLE inventory.inbox (
  msg_id TEXT PRIMARY KEY,
  processed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE inventory.sites (
  name TEXT PRIMARY KEY,
  description TEXT NOT NULL DEFAULT '',
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE inventory.devices (
  id UUID PRIMARY KEY,
  udi_pid TEXT NOT NULL,
  udi_serial TEXT NOT NULL,
  hostname TEXT NOT NULL,
  model TEXT NOT NULL,
  software_version TEXT NOT NULL DEFAULT '',
  base_url TEXT NOT NULL,
  site TEXT NOT NULL DEFAULT '',
  smart_account TEXT NOT NULL,
  virtual_account TEXT NOT NULL,
  username TEXT NOT NULL,
  password_sealed TEXT NOT NULL,
  is_cube BOOLEAN NOT NULL DEFAULT false,
  network_license TEXT NOT NULL DEFAULT 'network-essentials',
  dna_tier TEXT,
  revision BIGINT NOT NULL DEFAULT 1,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  CONSTRAINT devices_udi_unique UNIQUE (udi_pid, udi_serial)
);
CREATE INDEX devices_site ON inventory.devices (site);
CREATE INDEX devices_va ON inventory.devices (smart_account, virtual_account);
CREATE INDEX devices_model ON inventory.devices (model);
