-- When the device's licenses (network license or DNA tier) last changed as inventory reported
-- them: a policy's report-on-change days run from here. NULL: not since Tally knows the device.
ALTER TABLE sched.devices ADD COLUMN licenses_changed_at TIMESTAMPTZ;
