INSERT INTO rum.device_policies AS p (device_id, source, reason, policy, policy_type, ack_required,
  device_policy, installed_at, last_ack_received, device_next_ack_deadline, notes, read_failed,
  read_at)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::text[], $6::bool[],
  $7::jsonb[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[], $11::text[], $12::bool[],
  $13::timestamptz[])
ON CONFLICT (device_id) DO UPDATE SET source = EXCLUDED.source, reason = EXCLUDED.reason,
  policy = EXCLUDED.policy, policy_type = EXCLUDED.policy_type,
  ack_required = EXCLUDED.ack_required, device_policy = EXCLUDED.device_policy,
  installed_at = EXCLUDED.installed_at, last_ack_received = EXCLUDED.last_ack_received,
  device_next_ack_deadline = EXCLUDED.device_next_ack_deadline, notes = EXCLUDED.notes,
  read_failed = EXCLUDED.read_failed, read_at = EXCLUDED.read_at
-- A failed read never replaces a policy read from the device.
WHERE NOT (EXCLUDED.read_failed AND p.source = 'device')
