DROP TABLE tiers.history;
DROP TABLE tiers.job_items;
DROP TABLE tiers.jobs;
DROP TABLE tiers.devices;
DROP TABLE tiers.pools;
DROP TABLE tiers.rules;
