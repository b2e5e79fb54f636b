-- One device with Catalyst Center's computed columns (as in catalyst_device_page_stored.sql).
SELECT id, hostname, udi_pid, udi_serial, model, software_version, base_url, site, groups,
  smart_account, virtual_account, network_license, dna_tier, updated_at, last_upload_at,
  CASE WHEN udi_pid LIKE 'C9800%' THEN 'Wireless Controller' WHEN udi_pid ~ '^(C9[2-6]|WS-C|IE-|C1000)' THEN 'Switches and Hubs' ELSE 'Routers' END AS device_type,
  CASE WHEN last_upload_at IS NOT NULL OR last_ack_at IS NOT NULL THEN 'Registered' ELSE 'Unregistered' END AS registration_status,
  CASE dna_tier WHEN 'dna-essentials' THEN 'Essentials' WHEN 'dna-advantage' THEN 'Advantage' WHEN 'dna-premier' THEN 'Premier' ELSE 'NA' END AS dna_level,
  (out_of_compliance OR COALESCE(deadline <= now(), false)) AS out_of_compliance
FROM sched.devices
WHERE id = $1 AND NOT deleted
