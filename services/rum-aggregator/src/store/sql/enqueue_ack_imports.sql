INSERT INTO rum.ack_imports (id, device_id, cycle_id, report_ids, ack)
SELECT u.id, u.device_id, u.cycle_id,
COALESCE(string_to_array(NULLIF(u.rids, ''), ',')::int8[], '{}'), u.ack
FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[])
AS u(id, device_id, cycle_id, rids, ack)
