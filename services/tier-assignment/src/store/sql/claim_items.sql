WITH picked AS (
  SELECT i.job_id, i.device_id,
  CASE WHEN i.state IN ('pending', 'pushing') AND j.state = 'applying' THEN 'pushing'
       ELSE 'reverting' END AS next
  FROM tiers.job_items i JOIN tiers.jobs j ON j.id = i.job_id
  WHERE (i.state = 'pending' AND j.state = 'applying')
     OR (i.state = 'revert_pending' AND j.state = 'rolling_back')
     OR (i.state IN ('pushing', 'reverting') AND i.claimed_until < now())
  ORDER BY i.job_id, i.seq LIMIT $1 FOR UPDATE OF i SKIP LOCKED)
UPDATE tiers.job_items i SET state = p.next, claim = gen_random_uuid(),
  claimed_until = now() + $2 * interval '1 millisecond', updated_at = now()
FROM picked p, tiers.devices d
WHERE i.job_id = p.job_id AND i.device_id = p.device_id AND d.id = i.device_id
RETURNING i.job_id, i.device_id, i.state, i.from_network, i.from_dna, i.from_va,
  i.to_network, i.to_dna, i.to_va, d.base_url, d.username, d.password_sealed,
  d.deleted, i.claim
