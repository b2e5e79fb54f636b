-- Webhook endpoints and their delivery queue for the renewal scheduler's alerts (crate
-- tally-webhook). A delivery row is written in the same transaction as the alert it carries, so
-- nothing is lost between the two; the unique key makes a repeated alert a no-op.
CREATE TABLE sched.webhooks (
  id UUID PRIMARY KEY,
  url TEXT NOT NULL,
  -- HMAC key, sealed with the platform SecretBox: never stored or shown in clear.
  secret_sealed TEXT NOT NULL,
  description TEXT NOT NULL DEFAULT '',
  -- Alert kinds to receive; empty means every kind.
  events TEXT[] NOT NULL DEFAULT '{}',
  enabled BOOLEAN NOT NULL DEFAULT true,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE sched.webhook_deliveries (
  id UUID PRIMARY KEY,
  webhook_id UUID NOT NULL REFERENCES sched.webhooks (id) ON DELETE CASCADE,
  event_id UUID NOT NULL,
  kind TEXT NOT NULL,
  -- The exact body sent (JSON bytes), so every attempt carries the same document.
  payload BYTEA NOT NULL,
  state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
  attempts INT NOT NULL DEFAULT 0,
  -- Also the lease: a claimed row is not due again until its attempt has had time to finish.
  next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  -- Fencing token of the attempt in flight; a stale worker's result does not match it.
  claim UUID,
  last_status INT,
  last_error TEXT,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  delivered_at TIMESTAMPTZ,
  UNIQUE (webhook_id, event_id)
);
CREATE INDEX sched_webhook_deliveries_due ON sched.webhook_deliveries (next_attempt_at)
  WHERE state = 'pending';
CREATE INDEX sched_webhook_deliveries_state ON sched.webhook_deliveries (state, created_at);
