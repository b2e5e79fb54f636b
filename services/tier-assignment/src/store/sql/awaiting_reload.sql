SELECT smart_account, virtual_account, license, count(*) AS n FROM (
  SELECT smart_account, virtual_account, network_pool AS license FROM tiers.devices
  WHERE NOT deleted AND network_pool IS NOT NULL AND state = 'pending_reload'
  UNION ALL
  SELECT smart_account, virtual_account, dna_pool FROM tiers.devices
  WHERE NOT deleted AND dna_pool IS NOT NULL AND state = 'pending_reload') h
GROUP BY smart_account, virtual_account, license
