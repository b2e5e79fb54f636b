-- networkDeviceLicenses/summary: the fleet's counts by license level, unregistered and out of
-- compliance devices (past the stored ACK deadline or on an overcommitted pool), and the
-- licenses of subscription lines that ended or end within 90 days (last pool sync).
SELECT count(*) AS total,
  count(*) FILTER (WHERE network_license = 'network-essentials') AS net_ess,
  count(*) FILTER (WHERE network_license = 'network-advantage') AS net_adv,
  count(*) FILTER (WHERE dna_tier = 'dna-essentials') AS dna_ess,
  count(*) FILTER (WHERE dna_tier = 'dna-advantage') AS dna_adv,
  count(*) FILTER (WHERE dna_tier = 'dna-premier') AS dna_prem,
  count(*) FILTER (WHERE CASE WHEN last_upload_at IS NOT NULL OR last_ack_at IS NOT NULL THEN 'Registered' ELSE 'Unregistered' END = 'Unregistered') AS unregistered,
  count(*) FILTER (WHERE (out_of_compliance OR COALESCE(deadline <= now(), false))) AS out_of_compliance,
  (SELECT COALESCE(sum(quantity), 0)::int8 FROM sched.pool_terms
   WHERE end_date <= now()) AS expired,
  (SELECT COALESCE(sum(quantity), 0)::int8 FROM sched.pool_terms
   WHERE end_date > now() AND end_date <= now() + interval '90 days') AS expiring
FROM sched.devices WHERE NOT deleted
