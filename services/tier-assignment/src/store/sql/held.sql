SELECT smart_account, virtual_account, license, count(*) AS n FROM (
  SELECT smart_account, virtual_account, network_pool AS license FROM tiers.devices
  WHERE NOT deleted AND network_pool IS NOT NULL
  UNION ALL
  SELECT smart_account, virtual_account, dna_pool FROM tiers.devices
  WHERE NOT deleted AND dna_pool IS NOT NULL
  UNION ALL
  SELECT d.smart_account, i.from_va, p.old FROM tiers.job_items i
  JOIN tiers.jobs j ON j.id = i.job_id JOIN tiers.devices d ON d.id = i.device_id
  CROSS JOIN LATERAL (VALUES (i.from_network_pool, i.to_network_pool),
    (i.from_dna_pool, i.to_dna_pool)) AS p(old, new)
  WHERE NOT d.deleted AND p.old IS NOT NULL
  AND (p.old IS DISTINCT FROM p.new OR i.from_va <> i.to_va)
  AND (i.state IN ('pending', 'revert_pending', 'pushing', 'reverting') OR (i.state = 'applied'
    AND j.mode = 'all_or_nothing' AND j.state IN ('applying', 'rolling_back')))) h
GROUP BY smart_account, virtual_account, license
