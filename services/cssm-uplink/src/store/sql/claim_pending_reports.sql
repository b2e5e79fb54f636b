SELECT udi_pid, udi_serial, report_id, device_id FROM uplink.reports
WHERE state = 'pending' AND smart_account = $1 AND virtual_account = $2
ORDER BY device_id, report_id LIMIT $3 FOR UPDATE SKIP LOCKED
