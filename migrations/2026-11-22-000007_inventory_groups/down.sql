DROP INDEX inventory.devices_groups;
ALTER TABLE inventory.devices DROP COLUMN groups;
