//! What Tally's tests share: a fresh Postgres database per test (cloned from a migrated
//! template) and a NATS bus in a namespace of its own. Only ever a dev-dependency, so no
//! production crate carries test code.

mod db;

pub use db::{TestDb, admin_url};

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
