-- Operator-defined group names (e.g. access, wan, voice) used to select devices in bulk.
ALTER TABLE inventory.devices ADD COLUMN groups TEXT[] NOT NULL DEFAULT '{}';
-- GIN so that `groups @> ARRAY[...]` (the list filter) does not scan the whole fleet.
CREATE INDEX devices_groups ON inventory.devices USING GIN (groups);
