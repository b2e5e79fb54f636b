DROP TABLE sched.catalyst_tasks;
