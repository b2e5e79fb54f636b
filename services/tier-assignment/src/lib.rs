//! tier-assignment: DNA Essentials/Advantage/Premier (and network license) assignment in bulk,
//! against the entitlement pools CSSM lists.
//!
//! - `plan`: what a request would change, the pool impact and every violation (pure).
//! - `jobs`: a job commits the plan under one lock, so concurrent jobs cannot overcommit a pool.
//! - `apply`: workers push `license boot level` to devices (RESTCONF), roll back all-or-nothing
//!   jobs that fail, and track "pending reload" until the device's next report confirms it.
//! - `pools`: pools synced from CSSM's licenses API, and drift against Tally's ledger.
//! - `projection`: inventory's devices, plus the license ledger this service owns.

pub mod api;
pub mod apply;
pub mod jobs;
pub mod plan;
pub mod pools;
pub mod projection;
pub mod store;

use std::{sync::Arc, time::Duration};
use tally_bus::Bus;
use tally_platform::SecretBox;
use tally_southbound::DeviceClient;
use tally_store::Pool;

#[derive(Debug, Clone)]
pub struct Config {
    /// Devices configured at once, per worker.
    pub concurrency: usize,
    /// Job items per slice (one transaction each).
    pub slice: i64,
    pub device_timeout: Duration,
    pub device_retries: u32,
    /// How often pools are synced from CSSM (online mode only).
    pub pool_sync_interval: Duration,
    /// How long a worker's claim on a slice lasts; past it (the worker died) another worker
    /// takes the items again. Longer than a slice's pushes can take.
    pub claim_lease: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            concurrency: 64,
            slice: 256,
            device_timeout: Duration::from_secs(10),
            device_retries: 2,
            pool_sync_interval: Duration::from_secs(3600),
            claim_lease: Duration::from_secs(300),
        }
    }
}

#[derive(Clone)]
pub struct Tiers {
    pub pool: Pool,
    pub bus: Bus,
    pub secrets: SecretBox,
    pub client: DeviceClient,
    /// CSSM's API; `None` for air-gapped installations, which import pools as files.
    pub cssm: Option<Arc<tally_cssm::CssmClient>>,
    pub cfg: Arc<Config>,
}

impl Tiers {
    pub fn new(
        pool: Pool,
        bus: Bus,
        secrets: SecretBox,
        cssm: Option<Arc<tally_cssm::CssmClient>>,
        cfg: Config,
    ) -> Result<Self, tally_southbound::SouthboundError> {
        let client = DeviceClient::new(cfg.device_timeout, cfg.device_retries)?;
        Ok(Self {
            pool,
            bus,
            secrets,
            client,
            cssm,
            cfg: Arc::new(cfg),
        })
    }
}

pub use api::routes;

/// Durable consumer name shared by all replicas.
pub const DURABLE: &str = "tier-assignment";

/// Runs the consumer, the apply worker, the pool sync and the outbox relay.
pub async fn run(t: Tiers) -> Result<(), tally_bus::BusError> {
    let mut tasks = vec![
        tokio::spawn(tally_bus::relay::run(
            t.bus.clone(),
            t.pool.clone(),
            tally_store::outbox::Schema::Tiers,
        )),
        tokio::spawn(apply::run_worker(t.clone())),
    ];
    if t.cssm.is_some() {
        tasks.push(tokio::spawn(pools::run_sync(t.clone())));
    }
    let result = router(t.clone()).run(t.bus.clone(), DURABLE).await;
    for task in tasks {
        task.abort();
    }
    result
}

/// The events tier-assignment consumes, each with its handler (the consumer's subjects and
/// dispatch).
pub fn router(t: Tiers) -> tally_bus::router::Router<Tiers> {
    use tally_bus::proto::{
        AcksImported, DevicesDeleted, DevicesUpserted, ReportsCollected, TransferRequested,
    };
    tally_bus::router::Router::new(t)
        .on(|t, id, ev: DevicesUpserted| async move { projection::upsert(&t, &id, ev).await })
        .on(|t, id, ev: DevicesDeleted| async move { projection::delete(&t, &id, ev).await })
        .on(|t, id, ev: ReportsCollected| async move {
            apply::confirm_from_reports(&t, &id, ev).await
        })
        .on(|t, id, ev: AcksImported| async move { apply::record_acks(&t, &id, ev).await })
        .on(|t, id, ev: TransferRequested| async move { jobs::transfer(&t, &id, ev).await })
}
