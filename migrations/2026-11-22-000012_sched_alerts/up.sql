-- Alerts fire once per (subject, kind, deadline, threshold), however many replicas evaluate.
CREATE TABLE sched.alerts (
  id UUID PRIMARY KEY,
  subject TEXT NOT NULL,
  kind TEXT NOT NULL,
  due TIMESTAMPTZ NOT NULL,
  threshold TEXT NOT NULL,
  severity TEXT NOT NULL,
  device_id UUID,
  hostname TEXT NOT NULL DEFAULT '',
  site TEXT NOT NULL DEFAULT '',
  virtual_account TEXT NOT NULL DEFAULT '',
  message TEXT NOT NULL,
  -- Matched a silence when it fired: recorded, not delivered.
  silenced BOOLEAN NOT NULL DEFAULT false,
  fired_at TIMESTAMPTZ NOT NULL,
  acknowledged_at TIMESTAMPTZ,
  acknowledged_by TEXT,
  UNIQUE (subject, kind, due, threshold)
);
CREATE INDEX sched_alerts_fired ON sched.alerts (fired_at DESC);
CREATE INDEX sched_alerts_open ON sched.alerts (acknowledged_at) WHERE acknowledged_at IS NULL;

-- Silences stop delivery of matching alerts until they expire (NULL fields match anything).
CREATE TABLE sched.silences (
  id UUID PRIMARY KEY,
  kind TEXT,
  site TEXT,
  device_id UUID,
  until TIMESTAMPTZ NOT NULL,
  reason TEXT NOT NULL,
  created_by TEXT NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
