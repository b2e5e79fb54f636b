//! What the scheduler's test files share.

use std::sync::Arc;
use tally_renewal_scheduler::{Config, Scheduler};
use tally_testkit::TestDb;

/// The scheduler on a fresh database and bus, with the default config and no webhooks.
pub async fn scheduler() -> (TestDb, Scheduler) {
    let db = TestDb::new().await.unwrap();
    let pool = tally_store::pool(&db.url, 8).unwrap();
    let bus = tally_testkit::bus().await.unwrap();
    let s = Scheduler {
        pool,
        bus,
        cfg: Arc::new(Config::default()),
        webhooks: None,
    };
    (db, s)
}
