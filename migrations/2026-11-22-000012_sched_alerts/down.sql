DROP TABLE sched.silences;
DROP TABLE sched.alerts;
