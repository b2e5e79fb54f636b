WITH u AS (SELECT * FROM unnest($2::uuid[], $3::int4[], $4::text[], $5::text[],
  $6::text[], $7::text[], $8::text[]) AS u(id, seq, n, d, v, np, dp)),
items AS (INSERT INTO tiers.job_items (job_id, device_id, seq, hostname, state,
  from_network, from_dna, from_va, from_network_pool, from_dna_pool, to_network,
  to_dna, to_va, to_network_pool, to_dna_pool)
  SELECT $1, d.id, u.seq, d.hostname, 'pending', d.network_license, d.dna_tier,
  d.virtual_account, d.network_pool, d.dna_pool, u.n, u.d, u.v, u.np, u.dp
  FROM u JOIN tiers.devices d ON d.id = u.id)
UPDATE tiers.devices d SET network_license = u.n, dna_tier = u.d, virtual_account = u.v,
network_pool = u.np, dna_pool = u.dp, state = 'applying', job_id = $1
FROM u WHERE d.id = u.id
