SELECT d.id, d.network_license, d.dna_tier, d.job_id FROM tiers.devices d
LEFT JOIN tiers.jobs j ON j.id = d.job_id
WHERE d.id = ANY($1) AND d.state = 'pending_reload'
AND (j.id IS NULL OR j.state NOT IN ('applying', 'rolling_back')) FOR UPDATE OF d
