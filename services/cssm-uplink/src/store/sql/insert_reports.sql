INSERT INTO uplink.reports (udi_pid, udi_serial, report_id, device_id, cycle_id,
smart_account, virtual_account, body)
SELECT u.p, u.s, u.r, u.d, $5, u.sa, u.va, u.b FROM unnest($1::text[], $2::text[],
$3::int8[], $4::uuid[], $6::text[], $7::text[], $8::bytea[]) AS u(p, s, r, d, sa, va, b)
ON CONFLICT DO NOTHING
