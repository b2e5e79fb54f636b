UPDATE tiers.job_items SET state = 'cancelled', updated_at = now()
WHERE (job_id, device_id) IN (SELECT job_id, device_id FROM tiers.job_items
WHERE job_id = $1 AND state = 'pending' FOR UPDATE SKIP LOCKED) RETURNING device_id
