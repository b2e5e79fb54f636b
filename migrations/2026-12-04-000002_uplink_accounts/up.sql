-- The account directory: a (smart account, virtual account) pair as the inventory names it, and
-- the ids CSSM addresses it by. `cssm` rows are what v2/accounts/search listed at the last
-- refresh (replaced whole by each refresh); `operator` rows are ids an operator gave (air-gapped
-- sites, or an API client that may not search) and win over `cssm` rows.
CREATE TABLE uplink.accounts (
  source TEXT NOT NULL,
  smart_account TEXT NOT NULL,
  smart_account_name TEXT,
  virtual_account TEXT NOT NULL,
  smart_account_id TEXT NOT NULL,
  virtual_account_id TEXT NOT NULL,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (source, smart_account, virtual_account)
);
-- The last refresh from CSSM (one row): when, whether it worked, why not, what it found.
CREATE TABLE uplink.account_refreshes (
  id SMALLINT PRIMARY KEY DEFAULT 1 CHECK (id = 1),
  at TIMESTAMPTZ NOT NULL,
  error TEXT,
  smart_accounts INT NOT NULL,
  virtual_accounts INT NOT NULL
);
-- Pairs an offline export had no ids for (its manifest carries the names instead).
ALTER TABLE uplink.exports ADD COLUMN names_without_ids TEXT[] NOT NULL DEFAULT '{}';
