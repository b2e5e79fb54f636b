DROP TABLE sched.cycle_acks;
