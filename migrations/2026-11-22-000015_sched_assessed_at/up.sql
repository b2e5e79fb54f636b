-- When each stored status was computed: a roll-up may use the stored statuses for a time no
-- earlier than the newest of these. Kept per row (read through an index) instead of in one
-- clock row that every writer had to lock.
ALTER TABLE sched.devices ADD COLUMN assessed_at TIMESTAMPTZ;
CREATE INDEX sched_devices_assessed_at ON sched.devices (assessed_at);
DROP TABLE sched.compliance_clock;

-- The newest pool announcement applied per smart account, so an older one delivered late (or
-- one that empties the account) is recognised.
CREATE TABLE sched.pool_syncs (
  smart_account TEXT PRIMARY KEY,
  synced_at TIMESTAMPTZ NOT NULL
);
INSERT INTO sched.pool_syncs SELECT smart_account, max(synced_at) FROM sched.pools GROUP BY 1;
