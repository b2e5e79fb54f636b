-- Read-back of each ACK import (docs/interop.md, "Device policy and read-back (RESTCONF)"):
-- confirmed (the device's last ACK received moved), unconfirmed (delivered, but the device's
-- state could not be read: no RESTCONF, or the read failed), not_applied (the device answered
-- 2xx but its last ACK received did not move; the import is failed). NULL: not read back (not
-- imported yet, or the import itself failed). The device's last ACK received before and after.
ALTER TABLE rum.ack_imports
  ADD COLUMN confirmation TEXT,
  ADD COLUMN confirmation_reason TEXT,
  ADD COLUMN ack_received_before TIMESTAMPTZ,
  ADD COLUMN ack_received_after TIMESTAMPTZ;

-- Each device's own policy as read from its cisco-smart-license state during collection
-- (source 'device'), or Cisco's default with the reason it had to be assumed (source
-- 'assumed'). policy: tally_domain::policy::Policy as JSON; device_policy: the leaves as read.
-- read_failed: this row comes from a read that failed (a later failed read never replaces a
-- policy read from the device).
CREATE TABLE rum.device_policies (
  device_id UUID PRIMARY KEY,
  source TEXT NOT NULL,
  reason TEXT,
  policy JSONB NOT NULL,
  policy_type TEXT,
  ack_required BOOLEAN NOT NULL,
  device_policy JSONB,
  installed_at TIMESTAMPTZ,
  last_ack_received TIMESTAMPTZ,
  device_next_ack_deadline TIMESTAMPTZ,
  notes TEXT,
  read_failed BOOLEAN NOT NULL DEFAULT false,
  read_at TIMESTAMPTZ NOT NULL
);
