DROP TABLE sched.devices;
