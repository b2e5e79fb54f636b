-- Devices matching the Catalyst filters ($1 device type, $2 registration status, $3 DNA level,
-- $4 virtual account, $5 smart account, $6 device id), in Catalyst Center's vocabulary.
SELECT count(*) AS n FROM sched.devices
WHERE NOT deleted
  AND ($1::text IS NULL OR lower(CASE WHEN udi_pid LIKE 'C9800%' THEN 'Wireless Controller' WHEN udi_pid ~ '^(C9[2-6]|WS-C|IE-|C1000)' THEN 'Switches and Hubs' ELSE 'Routers' END) = lower($1))
  AND ($2::text IS NULL OR lower(CASE WHEN last_upload_at IS NOT NULL OR last_ack_at IS NOT NULL THEN 'Registered' ELSE 'Unregistered' END) = lower($2))
  AND ($3::text IS NULL OR lower(CASE dna_tier WHEN 'dna-essentials' THEN 'Essentials' WHEN 'dna-advantage' THEN 'Advantage' WHEN 'dna-premier' THEN 'Premier' ELSE 'NA' END) = lower($3))
  AND ($4::text IS NULL OR virtual_account = $4)
  AND ($5::text IS NULL OR smart_account = $5)
  AND ($6::uuid IS NULL OR id = $6)
