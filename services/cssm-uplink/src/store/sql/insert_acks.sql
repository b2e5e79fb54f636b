INSERT INTO uplink.acks (batch_id, device_id, report_ids, ack)
SELECT $1, u.d, COALESCE(string_to_array(NULLIF(u.r, ''), ',')::int8[], '{}'), u.a
FROM unnest($2::uuid[], $3::text[], $4::text[]) AS u(d, r, a) ON CONFLICT DO NOTHING
