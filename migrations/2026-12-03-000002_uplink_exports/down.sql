DROP INDEX uplink.batches_export;
ALTER TABLE uplink.batches DROP COLUMN export_id;
DROP TABLE uplink.exports;
