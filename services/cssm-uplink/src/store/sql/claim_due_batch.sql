SELECT id, smart_account, virtual_account, nonce, state, poll_id, attempts, poll_id_numeric FROM uplink.batches
WHERE state IN ('new', 'polling') AND mode = 'online' AND next_attempt_at <= now()
ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED
