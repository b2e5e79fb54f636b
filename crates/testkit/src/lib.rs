//! What Tally's tests share: a fresh Postgres database per test (cloned from a migrated
//! template), a NATS bus in a namespace of its own, a count over SQL, and [`fixtures`] that seed
//! a service's projections by publishing inventory's real events. Only ever a dev-dependency, so
//! no production crate carries test code (and no service crate: services depend on this one).

mod db;
pub mod fixtures;

pub use db::{TestDb, admin_url};

use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;
use std::future::Future;
use std::time::{Duration, Instant};
use tally_bus::{Bus, BusError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("postgres (admin connection): {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Store(#[from] tally_store::StoreError),
}

/// `TALLY_TEST_NATS_URL`, else the default local server.
pub fn nats_url() -> String {
    std::env::var("TALLY_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A bus in a namespace of its own, with its stream created.
pub async fn bus() -> Result<Bus, BusError> {
    let bus = Bus::connect(&nats_url(), &format!("t{}", uuid::Uuid::new_v4().simple())).await?;
    bus.ensure_stream().await?;
    Ok(bus)
}

/// The one `bigint` that `sql` (a `SELECT count(*) ...`, say) answers. Fails the test when the
/// query does.
pub async fn count(pool: &tally_store::Pool, sql: &str) -> i64 {
    let mut c = pool
        .get()
        .await
        .unwrap_or_else(|e| panic!("a connection for {sql:?}: {e}"));
    diesel::select(diesel::dsl::sql::<BigInt>(&format!("({sql})")))
        .get_result::<i64>(&mut c)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// How long [`consume_until`] waits for a consumer before failing the test.
pub const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);

/// Runs `consumer` (a service's `router(..).run(bus, DURABLE)`) until [`count`]`(pool, sql)`
/// answers `want`, then stops it. Fails the test when the consumer stops first or `want` is not
/// reached within [`WAIT`].
pub async fn consume_until<F>(consumer: F, pool: &tally_store::Pool, sql: &str, want: i64)
where
    F: Future<Output = Result<(), BusError>> + Send + 'static,
{
    let task = tokio::spawn(consumer);
    let deadline = Instant::now() + WAIT;
    loop {
        let n = count(pool, sql).await;
        if n == want {
            break;
        }
        if task.is_finished() {
            let stopped = task.await;
            panic!("the consumer stopped ({stopped:?}) while {sql} answered {n}, not {want}");
        }
        if Instant::now() >= deadline {
            task.abort();
            panic!("{sql} answered {n}, not {want}, after {WAIT:?} of consuming");
        }
        tokio::time::sleep(POLL).await;
    }
    task.abort();
}
