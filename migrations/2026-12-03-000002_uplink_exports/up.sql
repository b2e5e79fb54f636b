-- Every offline export is kept (its bundle bytes too) until its ACKs are in, so a lost download
-- can be fetched again by id; each exported batch names the export it went out in.
CREATE TABLE uplink.exports (
  id UUID PRIMARY KEY,
  file_name TEXT NOT NULL,
  smart_account TEXT NOT NULL,
  bundle BYTEA NOT NULL,
  reports INT NOT NULL,
  devices INT NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
ALTER TABLE uplink.batches ADD COLUMN export_id UUID REFERENCES uplink.exports (id) ON DELETE SET NULL;
CREATE INDEX batches_export ON uplink.batches (export_id) WHERE export_id IS NOT NULL;
