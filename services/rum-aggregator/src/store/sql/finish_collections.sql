UPDATE rum.collections c SET state = u.state, error = u.error, reports_new = u.n,
attempts = c.attempts + 1, finished_at = now()
FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int4[])
AS u(cycle_id, device_id, state, error, n)
WHERE c.cycle_id = u.cycle_id AND c.device_id = u.device_id
