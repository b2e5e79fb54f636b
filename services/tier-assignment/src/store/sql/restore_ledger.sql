UPDATE tiers.devices d SET network_license = i.from_network, dna_tier = i.from_dna,
virtual_account = i.from_va, network_pool = i.from_network_pool, dna_pool = i.from_dna_pool,
state = 'active', job_id = NULL
FROM tiers.job_items i WHERE i.job_id = $1 AND i.device_id = ANY($2) AND d.id = i.device_id
AND d.job_id = $1
