INSERT INTO tiers.job_items (job_id, device_id, seq, hostname, state, from_network,
from_dna, from_va, to_network, to_dna, to_va, error)
SELECT $1, u.id, u.seq, u.hostname, 'rejected', d.network_license, d.dna_tier,
d.virtual_account, d.network_license, d.dna_tier, d.virtual_account, u.error
FROM unnest($2::uuid[], $3::int4[], $4::text[], $5::text[]) AS u(id, seq, hostname, error)
JOIN tiers.devices d ON d.id = u.id
