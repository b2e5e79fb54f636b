INSERT INTO rum.reports (udi_pid, udi_serial, report_id, device_id, cycle_id,
entitlement_tag, software_version, usage_count, end_time, body)
SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::uuid[], $5::uuid[],
$6::text[], $7::text[], $8::int8[], $9::int8[], $10::bytea[])
ON CONFLICT DO NOTHING RETURNING udi_pid, udi_serial, report_id
