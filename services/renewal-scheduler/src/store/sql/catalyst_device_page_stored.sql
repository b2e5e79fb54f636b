-- A summary page sorted on a stored column: skip to the page over the sort column and id only
-- (an index scan), then build the page's rows, so deep pages stay cheap. Filters as in
-- catalyst_count_devices.sql; $7 limit, $8 offset; the ORDER BY placeholders are the sort column and
-- direction (store::catalyst::SortBy).
SELECT d.* FROM (
  SELECT id, hostname, udi_pid, udi_serial, model, software_version, base_url, site, groups,
    smart_account, virtual_account, network_license, dna_tier, updated_at, last_upload_at,
    CASE WHEN udi_pid LIKE 'C9800%' THEN 'Wireless Controller' WHEN udi_pid ~ '^(C9[2-6]|WS-C|IE-|C1000)' THEN 'Switches and Hubs' ELSE 'Routers' END AS device_type,
    CASE WHEN last_upload_at IS NOT NULL OR last_ack_at IS NOT NULL THEN 'Registered' ELSE 'Unregistered' END AS registration_status,
    CASE dna_tier WHEN 'dna-essentials' THEN 'Essentials' WHEN 'dna-advantage' THEN 'Advantage' WHEN 'dna-premier' THEN 'Premier' ELSE 'NA' END AS dna_level,
    (out_of_compliance OR COALESCE(deadline <= now(), false)) AS out_of_compliance
  FROM sched.devices
  WHERE id IN (
    SELECT id FROM sched.devices
    WHERE NOT deleted
      AND ($1::text IS NULL OR lower(CASE WHEN udi_pid LIKE 'C9800%' THEN 'Wireless Controller' WHEN udi_pid ~ '^(C9[2-6]|WS-C|IE-|C1000)' THEN 'Switches and Hubs' ELSE 'Routers' END) = lower($1))
      AND ($2::text IS NULL OR lower(CASE WHEN last_upload_at IS NOT NULL OR last_ack_at IS NOT NULL THEN 'Registered' ELSE 'Unregistered' END) = lower($2))
      AND ($3::text IS NULL OR lower(CASE dna_tier WHEN 'dna-essentials' THEN 'Essentials' WHEN 'dna-advantage' THEN 'Advantage' WHEN 'dna-premier' THEN 'Premier' ELSE 'NA' END) = lower($3))
      AND ($4::text IS NULL OR virtual_account = $4)
      AND ($5::text IS NULL OR smart_account = $5)
      AND ($6::uuid IS NULL OR id = $6)
    ORDER BY {column} {dir}, id {dir}
    LIMIT $7 OFFSET $8)
) d
ORDER BY {column} {dir}, id {dir}
