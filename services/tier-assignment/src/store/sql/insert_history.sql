INSERT INTO tiers.history (device_id, kind, event, from_value, to_value, job_id, detail)
SELECT u.d, u.k, $2, nullif(u.f, ''), nullif(u.t, ''), $6, $7
FROM unnest($1::uuid[], $3::text[], $4::text[], $5::text[]) AS u(d, k, f, t)
