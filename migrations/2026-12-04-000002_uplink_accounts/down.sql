ALTER TABLE uplink.exports DROP COLUMN names_without_ids;
DROP TABLE uplink.account_refreshes;
DROP TABLE uplink.accounts;
