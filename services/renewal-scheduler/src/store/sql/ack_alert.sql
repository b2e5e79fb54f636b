UPDATE sched.alerts SET acknowledged_at = coalesce(acknowledged_at, now()),
  acknowledged_by = coalesce(acknowledged_by, $2)
WHERE id = $1
RETURNING id, kind, severity, subject, device_id, hostname, site, virtual_account, due, threshold,
  message, silenced, fired_at, acknowledged_at, acknowledged_by
