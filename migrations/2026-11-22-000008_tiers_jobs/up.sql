-- Rules replaced through the API; no row means the shipped defaults.
CREATE TABLE tiers.rules (
  id SMALLINT PRIMARY KEY DEFAULT 1 CHECK (id = 1),
  doc JSONB NOT NULL,
  version BIGINT NOT NULL,
  updated_by TEXT NOT NULL,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Entitlement pools as CSSM lists them. How many devices Tally has holding a pool is counted
-- from tiers.devices, never stored, so it cannot drift from the ledger.
CREATE TABLE tiers.pools (
  smart_account TEXT NOT NULL,
  virtual_account TEXT NOT NULL,
  license TEXT NOT NULL,
  quantity BIGINT NOT NULL,
  cssm_in_use BIGINT NOT NULL,
  cssm_available BIGINT NOT NULL,
  status TEXT NOT NULL,
  details JSONB NOT NULL,
  synced_at TIMESTAMPTZ NOT NULL,
  PRIMARY KEY (smart_account, virtual_account, license)
);

-- inventory's devices (projection columns) plus the license ledger tier-assignment owns:
-- the levels and virtual account each device holds, and the pools it draws from.
CREATE TABLE tiers.devices (
  id UUID PRIMARY KEY,
  hostname TEXT NOT NULL,
  udi_pid TEXT NOT NULL,
  udi_serial TEXT NOT NULL,
  model TEXT NOT NULL,
  software_version TEXT NOT NULL,
  base_url TEXT NOT NULL,
  site TEXT NOT NULL,
  groups TEXT[] NOT NULL,
  username TEXT NOT NULL,
  password_sealed TEXT NOT NULL,
  is_cube BOOLEAN NOT NULL,
  revision BIGINT NOT NULL,
  deleted BOOLEAN NOT NULL DEFAULT false,
  smart_account TEXT NOT NULL,
  virtual_account TEXT NOT NULL,
  network_license TEXT NOT NULL,
  dna_tier TEXT,
  network_pool TEXT,
  dna_pool TEXT,
  -- active | applying | pending_reload
  state TEXT NOT NULL DEFAULT 'active',
  job_id UUID,
  reported_dna_tier TEXT,
  reported_at TIMESTAMPTZ
) WITH (fillfactor = 70); -- jobs rewrite ledger rows in bulk: room for in-page (HOT) updates
CREATE INDEX tiers_devices_site ON tiers.devices (site);
CREATE INDEX tiers_devices_model ON tiers.devices (model);
CREATE INDEX tiers_devices_groups ON tiers.devices USING GIN (groups);

CREATE TABLE tiers.jobs (
  id UUID PRIMARY KEY,
  idempotency_key TEXT UNIQUE,
  request_hash TEXT NOT NULL,
  request JSONB NOT NULL,
  mode TEXT NOT NULL,
  -- applying | rolling_back | done | partial | failed | rolled_back | cancelled
  state TEXT NOT NULL,
  cancel_requested BOOLEAN NOT NULL DEFAULT false,
  fingerprint TEXT NOT NULL,
  requested_by TEXT NOT NULL,
  devices_total INT NOT NULL,
  rejected INT NOT NULL,
  applied INT NOT NULL DEFAULT 0,
  failed INT NOT NULL DEFAULT 0,
  cancelled INT NOT NULL DEFAULT 0,
  reverted INT NOT NULL DEFAULT 0,
  confirmed INT NOT NULL DEFAULT 0,
  pools JSONB NOT NULL,
  error TEXT,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  finished_at TIMESTAMPTZ
);
CREATE INDEX tiers_jobs_created ON tiers.jobs (created_at DESC);

CREATE TABLE tiers.job_items (
  job_id UUID NOT NULL REFERENCES tiers.jobs (id),
  device_id UUID NOT NULL,
  seq INT NOT NULL,
  hostname TEXT NOT NULL,
  -- pending | pushing | applied | confirmed | failed | rejected | cancelled | revert_pending |
  -- reverting | reverted | revert_failed
  state TEXT NOT NULL,
  from_network TEXT NOT NULL,
  from_dna TEXT,
  from_va TEXT NOT NULL,
  from_network_pool TEXT,
  from_dna_pool TEXT,
  to_network TEXT NOT NULL,
  to_dna TEXT,
  to_va TEXT NOT NULL,
  to_network_pool TEXT,
  to_dna_pool TEXT,
  error TEXT,
  attempts INT NOT NULL DEFAULT 0,
  -- A worker's claim (pushing / reverting): its token, and until when it holds.
  claim UUID,
  claimed_until TIMESTAMPTZ,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (job_id, device_id)
);
CREATE INDEX tiers_job_items_work ON tiers.job_items (state, job_id, seq)
  WHERE state IN ('pending', 'revert_pending', 'pushing', 'reverting');

-- Every tier, virtual account and ACK event per device.
CREATE TABLE tiers.history (
  id BIGSERIAL PRIMARY KEY,
  device_id UUID NOT NULL,
  at TIMESTAMPTZ NOT NULL DEFAULT now(),
  -- tier | virtual_account | ack
  kind TEXT NOT NULL,
  -- configured | confirmed | reverted | acknowledged
  event TEXT NOT NULL,
  from_value TEXT,
  to_value TEXT,
  job_id UUID,
  detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX tiers_history_device ON tiers.history (device_id, at);
CREATE INDEX tiers_history_at ON tiers.history (at);
