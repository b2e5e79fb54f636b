INSERT INTO sched.pool_syncs (smart_account, synced_at) VALUES ($1, $2) ON CONFLICT (smart_account) DO UPDATE SET synced_at = excluded.synced_at WHERE sched.pool_syncs.synced_at <= excluded.synced_at
