-- A device can receive more than one ACK in a cycle (its reports split over two uploads, or a
-- retried import); a cycle counts devices, not imports.
CREATE TABLE sched.cycle_acks (
  cycle_id UUID NOT NULL,
  device_id UUID NOT NULL,
  ok BOOLEAN NOT NULL,
  PRIMARY KEY (cycle_id, device_id)
);

-- One cycle runs at a time, whoever starts it (API, cron, any replica).
CREATE UNIQUE INDEX cycles_one_running ON sched.cycles ((true)) WHERE state = 'running';
