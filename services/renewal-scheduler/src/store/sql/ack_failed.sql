INSERT INTO sched.cycle_acks (cycle_id, device_id, ok) SELECT $1, d, false FROM unnest($2::uuid[]) AS d ON CONFLICT (cycle_id, device_id) DO NOTHING
