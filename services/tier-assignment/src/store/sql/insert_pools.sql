INSERT INTO tiers.pools (smart_account, virtual_account, license, quantity, cssm_in_use,
cssm_available, status, details, synced_at)
SELECT $1, u.va, u.l, u.q, u.iu, u.av, u.st, u.d::jsonb, now()
FROM unnest($2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::text[], $8::text[])
AS u(va, l, q, iu, av, st, d)
