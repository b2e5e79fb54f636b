-- The scheduler's own copy of the fleet, for deadlines, compliance and the Catalyst Center API:
-- inventory's devices plus when each last had its usage uploaded and an ACK installed.
CREATE TABLE sched.devices (
  id UUID PRIMARY KEY,
  hostname TEXT NOT NULL,
  udi_pid TEXT NOT NULL,
  udi_serial TEXT NOT NULL,
  model TEXT NOT NULL,
  software_version TEXT NOT NULL,
  base_url TEXT NOT NULL,
  site TEXT NOT NULL,
  groups TEXT[] NOT NULL,
  smart_account TEXT NOT NULL,
  virtual_account TEXT NOT NULL,
  is_cube BOOLEAN NOT NULL,
  network_license TEXT NOT NULL,
  dna_tier TEXT,
  revision BIGINT NOT NULL,
  deleted BOOLEAN NOT NULL DEFAULT false,
  first_seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  -- CSSM acknowledged an upload of this device's usage (ACK received from CSSM).
  last_upload_at TIMESTAMPTZ,
  -- The device installed an ACK: its reporting deadline restarts from here.
  last_ack_at TIMESTAMPTZ
);
CREATE INDEX sched_devices_va ON sched.devices (smart_account, virtual_account);
CREATE INDEX sched_devices_site ON sched.devices (site);
CREATE INDEX sched_devices_ack ON sched.devices (last_ack_at);
