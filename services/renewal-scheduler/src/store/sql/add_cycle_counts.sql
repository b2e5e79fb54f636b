UPDATE sched.cycles SET
  devices = COALESCE($2, devices), collection_started = collection_started OR $2 IS NOT NULL,
  devices_ok = devices_ok + $3, devices_failed = devices_failed + $4,
  devices_with_reports = devices_with_reports + $5, reports_stored = reports_stored + $6,
  reports_quarantined = reports_quarantined + $7, reports_duplicate = reports_duplicate + $8,
  reports_uploaded = reports_uploaded + $9, reports_upload_failed = reports_upload_failed + $10,
  devices_upload_failed = devices_upload_failed + $11, batches = batches + $12,
  acks_imported = acks_imported + $13, acks_failed = acks_failed + $14
WHERE id = $1
