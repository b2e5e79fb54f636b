-- Asynchronous tasks of the Catalyst Center-compatible API (transfer, register, deregister):
-- clients get a task id at once and poll /dna/intent/api/v1/task/{id} until it ends.
CREATE TABLE sched.catalyst_tasks (
  id UUID PRIMARY KEY,
  kind TEXT NOT NULL,
  smart_account TEXT NOT NULL,
  virtual_account TEXT NOT NULL,
  device_ids UUID[] NOT NULL,
  requested_by TEXT NOT NULL,
  is_error BOOLEAN NOT NULL DEFAULT false,
  progress TEXT NOT NULL,
  failure_reason TEXT,
  -- The tier job that carries a transfer out, once tier-assignment accepted it.
  job_id UUID,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  finished_at TIMESTAMPTZ
);
