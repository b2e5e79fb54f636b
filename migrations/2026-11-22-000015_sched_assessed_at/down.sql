DROP TABLE sched.pool_syncs;
CREATE TABLE sched.compliance_clock (
  one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
  as_of TIMESTAMPTZ NOT NULL
);
INSERT INTO sched.compliance_clock (as_of) SELECT COALESCE(max(assessed_at), '-infinity') FROM sched.devices;
DROP INDEX sched.sched_devices_assessed_at;
ALTER TABLE sched.devices DROP COLUMN assessed_at;
