//! rum-aggregator: collects RUM reports from devices through Cisco's `/smartlic-service` API,
//! checks and stores them byte-exact (deduplicated by UDI and report id, malformed ones
//! quarantined with the reason), forwards them on the bus, and installs each ACK back into its
//! device, reading the device's `cisco-smart-license` state back to confirm it took the ACK, and
//! each device's own policy during collection.
//!
//! Work queues live in Postgres (`rum.collections`, `rum.ack_imports`). A worker locks a slice of
//! pending rows (`FOR UPDATE SKIP LOCKED`), talks to those devices, and commits the outcome with
//! its events in the same transaction. If the process dies mid-slice, Postgres drops the locks and
//! the rows are pending again for the next worker: nothing is lost, and deduplication makes a
//! repeated collection harmless.

pub mod api;
pub mod collect;
pub mod import;
pub mod projection;
pub mod store;

use std::{sync::Arc, time::Duration};
use tally_bus::Bus;
use tally_platform::SecretBox;
use tally_southbound::DeviceClient;
use tally_store::Pool;

#[derive(Debug, Clone)]
pub struct Config {
    /// Devices talked to at once, per worker.
    pub concurrency: usize,
    /// Parallel workers (each holds one database connection while it works a slice).
    pub workers: usize,
    /// Devices per slice.
    pub slice: i64,
    pub device_timeout: Duration,
    pub device_retries: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            concurrency: 128,
            workers: 2,
            slice: 256,
            device_timeout: Duration::from_secs(10),
            device_retries: 2,
        }
    }
}

/// How an import is read back: the device's state is read up to `attempts` times, `delay` apart,
/// until its last ACK received moved (a device may apply an ACK a moment after answering).
#[derive(Debug, Clone, Copy)]
pub struct Readback {
    pub attempts: u32,
    pub delay: Duration,
}

impl Default for Readback {
    fn default() -> Self {
        Self {
            attempts: 3,
            delay: Duration::from_millis(500),
        }
    }
}

#[derive(Clone)]
pub struct Aggregator {
    pub pool: Pool,
    pub bus: Bus,
    pub secrets: SecretBox,
    pub client: DeviceClient,
    pub cfg: Arc<Config>,
    pub readback: Readback,
}

impl Aggregator {
    pub fn new(
        pool: Pool,
        bus: Bus,
        secrets: SecretBox,
        cfg: Config,
    ) -> Result<Self, tally_southbound::SouthboundError> {
        let client = DeviceClient::new(cfg.device_timeout, cfg.device_retries)?;
        Ok(Self {
            pool,
            bus,
            secrets,
            client,
            cfg: Arc::new(cfg),
            readback: Readback::default(),
        })
    }
}

pub use api::routes;

/// Durable consumer name shared by all replicas.
pub const DURABLE: &str = "rum-aggregator";

/// Runs the consumers, workers and outbox relay until the task is dropped.
pub async fn run(agg: Aggregator) -> Result<(), tally_bus::BusError> {
    let relay = tokio::spawn(tally_bus::relay::run(
        agg.bus.clone(),
        agg.pool.clone(),
        tally_store::outbox::Schema::Rum,
    ));
    let mut tasks = vec![relay];
    for _ in 0..agg.cfg.workers.max(1) {
        tasks.push(tokio::spawn(collect::run_worker(agg.clone())));
        tasks.push(tokio::spawn(import::run_worker(agg.clone())));
    }
    let result = router(agg.clone()).run(agg.bus.clone(), DURABLE).await;
    for t in tasks {
        t.abort();
    }
    result
}

/// The events the aggregator consumes, each with its handler: the consumer's subjects and its
/// dispatch both come from here.
pub fn router(agg: Aggregator) -> tally_bus::router::Router<Aggregator> {
    use tally_bus::proto::{AcksReceived, CycleStarted, DevicesDeleted, DevicesUpserted};
    tally_bus::router::Router::new(agg)
        .on(|a, id, ev: DevicesUpserted| async move { projection::upsert(&a, &id, ev).await })
        .on(|a, id, ev: DevicesDeleted| async move { projection::delete(&a, &id, ev).await })
        .on(|a, id, ev: CycleStarted| async move { collect::start_cycle(&a, &id, ev).await })
        .on(|a, id, ev: AcksReceived| async move { import::enqueue(&a, &id, ev).await })
}
