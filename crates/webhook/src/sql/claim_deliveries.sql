WITH due AS (
  SELECT d.id FROM {s}.webhook_deliveries d
  JOIN {s}.webhooks w ON w.id = d.webhook_id
  WHERE d.state = 'pending' AND d.next_attempt_at <= now() AND w.enabled
  ORDER BY d.next_attempt_at
  LIMIT $1
  FOR UPDATE OF d SKIP LOCKED)
UPDATE {s}.webhook_deliveries d
SET attempts = d.attempts + 1, claim = $2,
    next_attempt_at = now() + make_interval(secs => $3)
FROM due, {s}.webhooks w
WHERE d.id = due.id AND w.id = d.webhook_id
RETURNING d.id, d.webhook_id, d.event_id, d.kind, d.payload, d.attempts,
          w.url, w.secret_sealed
