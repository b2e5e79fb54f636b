-- Compliance that answers fast over a million devices: each device's deadline is computed once
-- by the deadline engine (in Rust, when what it depends on changes) and stored; its status as of
-- the service clock is stored too, with the time it next changes; counts per roll-up key are
-- kept by statement triggers in the same transaction as the change.
ALTER TABLE sched.devices
  -- Nearest deadline over the device's entitlements (NULL: nothing is due).
  ADD COLUMN deadline TIMESTAMPTZ,
  -- A report went out after the last ACK and its ACK is not back.
  ADD COLUMN ack_pending BOOLEAN NOT NULL DEFAULT false,
  ADD COLUMN role TEXT NOT NULL DEFAULT 'switch',
  -- Stops working when its deadline passes (CUBE, SRST, CME).
  ADD COLUMN critical BOOLEAN NOT NULL DEFAULT false,
  -- False when an input of the deadline changed and the engine has not looked at it yet.
  ADD COLUMN assessed BOOLEAN NOT NULL DEFAULT false,
  ADD COLUMN status TEXT NOT NULL DEFAULT 'in_compliance',
  -- When `status` next changes as time passes (NULL: not without new data).
  ADD COLUMN status_until TIMESTAMPTZ,
  -- Holds a level whose pool in its virtual account is over its purchased quantity.
  ADD COLUMN out_of_compliance BOOLEAN NOT NULL DEFAULT false;

CREATE INDEX sched_devices_unassessed ON sched.devices (id) WHERE NOT assessed;
CREATE INDEX sched_devices_status_until ON sched.devices (status_until) WHERE NOT deleted;
-- The at-risk list: critical first, then the nearest deadline.
CREATE INDEX sched_devices_risk ON sched.devices ((NOT critical), deadline, id) WHERE NOT deleted;
CREATE INDEX sched_devices_hostname ON sched.devices (hostname, id) WHERE NOT deleted;

-- An input of the deadline changed: the engine must look at the device again.
CREATE FUNCTION sched.devices_dirty() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.first_seen_at IS DISTINCT FROM OLD.first_seen_at
     OR NEW.last_upload_at IS DISTINCT FROM OLD.last_upload_at
     OR NEW.last_ack_at IS DISTINCT FROM OLD.last_ack_at
     OR NEW.network_license IS DISTINCT FROM OLD.network_license
     OR NEW.dna_tier IS DISTINCT FROM OLD.dna_tier
     OR NEW.model IS DISTINCT FROM OLD.model
     OR NEW.is_cube IS DISTINCT FROM OLD.is_cube
     OR NEW.out_of_compliance IS DISTINCT FROM OLD.out_of_compliance THEN
    NEW.assessed := false;
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER sched_devices_dirty BEFORE UPDATE ON sched.devices
  FOR EACH ROW EXECUTE FUNCTION sched.devices_dirty();

-- Devices per roll-up key and stored status.
CREATE TABLE sched.compliance_counts (
  dim TEXT NOT NULL,
  key TEXT NOT NULL,
  status TEXT NOT NULL,
  critical BOOLEAN NOT NULL,
  n BIGINT NOT NULL,
  PRIMARY KEY (dim, key, status, critical)
);

-- One row per (device, dimension): the keys a device counts under.
CREATE FUNCTION sched.compliance_keys(sa TEXT, va TEXT, site TEXT, tier TEXT)
RETURNS TABLE (dim TEXT, key TEXT) LANGUAGE sql IMMUTABLE AS $$
  VALUES ('smart_account', sa), ('virtual_account', sa || '/' || va), ('site', site),
         ('tier', COALESCE(tier, 'none'))
$$;

-- Applies a statement's changes to the counts at once, in key order (so concurrent writers
-- lock count rows in the same order), skipping changes that move nothing.
CREATE FUNCTION sched.compliance_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO sched.compliance_counts AS c (dim, key, status, critical, n)
    SELECT k.dim, k.key, r.status, r.critical, count(*)
      FROM new_rows r, sched.compliance_keys(r.smart_account, r.virtual_account, r.site, r.dna_tier) k
     WHERE NOT r.deleted
     GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (dim, key, status, critical) DO UPDATE SET n = c.n + excluded.n;
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO sched.compliance_counts AS c (dim, key, status, critical, n)
    SELECT k.dim, k.key, r.status, r.critical, -count(*)
      FROM old_rows r, sched.compliance_keys(r.smart_account, r.virtual_account, r.site, r.dna_tier) k
     WHERE NOT r.deleted
     GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (dim, key, status, critical) DO UPDATE SET n = c.n + excluded.n;
  ELSE
    INSERT INTO sched.compliance_counts AS c (dim, key, status, critical, n)
    SELECT dim, key, status, critical, sum(d) FROM (
      SELECT k.dim, k.key, r.status, r.critical, -1 AS d
        FROM old_rows r, sched.compliance_keys(r.smart_account, r.virtual_account, r.site, r.dna_tier) k
       WHERE NOT r.deleted
      UNION ALL
      SELECT k.dim, k.key, r.status, r.critical, 1
        FROM new_rows r, sched.compliance_keys(r.smart_account, r.virtual_account, r.site, r.dna_tier) k
       WHERE NOT r.deleted
    ) x GROUP BY 1, 2, 3, 4 HAVING sum(d) <> 0 ORDER BY 1, 2, 3, 4
    ON CONFLICT (dim, key, status, critical) DO UPDATE SET n = c.n + excluded.n;
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER sched_compliance_insert AFTER INSERT ON sched.devices
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION sched.compliance_count();
CREATE TRIGGER sched_compliance_update AFTER UPDATE ON sched.devices
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION sched.compliance_count();
CREATE TRIGGER sched_compliance_delete AFTER DELETE ON sched.devices
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION sched.compliance_count();

-- Devices already in the table count from now on (the engine assesses them on first use).
INSERT INTO sched.compliance_counts (dim, key, status, critical, n)
SELECT k.dim, k.key, d.status, d.critical, count(*)
  FROM sched.devices d, sched.compliance_keys(d.smart_account, d.virtual_account, d.site, d.dna_tier) k
 WHERE NOT d.deleted GROUP BY 1, 2, 3, 4;

-- A device's status at `at` from its stored deadline: overdue once the deadline has passed;
-- out of compliance while a pool it draws on is overcommitted; pending within `warn` of the
-- deadline or while an ACK is outstanding (the domain's DeadlineStatus).
CREATE FUNCTION sched.compliance_status(deadline TIMESTAMPTZ, pending BOOLEAN, ooc BOOLEAN,
                                        at TIMESTAMPTZ, warn INTERVAL)
RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN deadline <= at THEN 'ack_overdue'
              WHEN ooc THEN 'out_of_compliance'
              WHEN pending OR deadline - warn <= at THEN 'ack_pending'
              ELSE 'in_compliance' END
$$;
-- When that status next changes as time passes (NULL: not without new data).
CREATE FUNCTION sched.compliance_until(deadline TIMESTAMPTZ, pending BOOLEAN, ooc BOOLEAN,
                                       at TIMESTAMPTZ, warn INTERVAL)
RETURNS TIMESTAMPTZ LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN deadline IS NULL OR deadline <= at THEN NULL
              WHEN ooc OR pending OR deadline - warn <= at THEN deadline
              ELSE deadline - warn END
$$;
-- The service clock the stored statuses were computed at: answers for an earlier time cannot
-- use them.
CREATE TABLE sched.compliance_clock (
  one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
  as_of TIMESTAMPTZ NOT NULL
);
INSERT INTO sched.compliance_clock (as_of) VALUES ('-infinity');
CREATE INDEX sched_devices_deadline ON sched.devices (deadline) WHERE NOT deleted;

-- Entitlement pools as tier-assignment last announced them (PoolsSynced), for renewal reminders,
-- out-of-compliance and the Catalyst Center term and usage calls.
CREATE TABLE sched.pools (
  smart_account TEXT NOT NULL,
  virtual_account TEXT NOT NULL,
  license TEXT NOT NULL,
  level TEXT NOT NULL,
  -- Model patterns it fits (e.g. C9300-24*), empty when no rule names it.
  models TEXT[] NOT NULL,
  quantity BIGINT NOT NULL,
  cssm_in_use BIGINT NOT NULL,
  held BIGINT NOT NULL,
  -- Since when more are in use (by CSSM's count or Tally's ledger) than were bought.
  over_since TIMESTAMPTZ,
  synced_at TIMESTAMPTZ NOT NULL,
  PRIMARY KEY (smart_account, virtual_account, license)
);
CREATE TABLE sched.pool_terms (
  smart_account TEXT NOT NULL,
  virtual_account TEXT NOT NULL,
  license TEXT NOT NULL,
  line INT NOT NULL,
  subscription_id TEXT NOT NULL,
  license_type TEXT NOT NULL,
  quantity BIGINT NOT NULL,
  start_date TIMESTAMPTZ,
  end_date TIMESTAMPTZ,
  PRIMARY KEY (smart_account, virtual_account, license, line)
);
CREATE INDEX sched_pool_terms_end ON sched.pool_terms (end_date);
