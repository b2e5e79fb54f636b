INSERT INTO rum.quarantine (device_id, cycle_id, reason, body)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bytea[])
