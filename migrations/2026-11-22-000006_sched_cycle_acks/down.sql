DROP INDEX sched.cycles_one_running; DROP TABLE sched.cycle_acks;
