UPDATE tiers.jobs SET state = CASE
  WHEN state = 'rolling_back' THEN CASE
    WHEN EXISTS (SELECT 1 FROM tiers.job_items WHERE job_id = $1 AND state = 'revert_failed')
    THEN 'failed' WHEN cancel_requested THEN 'cancelled' ELSE 'rolled_back' END
  WHEN cancel_requested THEN 'cancelled'
  WHEN failed > 0 OR rejected > 0 THEN CASE WHEN applied > 0 THEN 'partial' ELSE 'failed' END
  ELSE 'done' END,
finished_at = now(), updated_at = now()
WHERE id = $1 AND state IN ('applying', 'rolling_back')
