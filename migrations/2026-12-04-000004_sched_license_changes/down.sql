ALTER TABLE sched.devices DROP COLUMN licenses_changed_at;
