//! inventory: the managed devices (UDI, model, site, groups, smart/virtual account, management
//! address, sealed southbound credentials) and sites. Every change is published on NATS
//! (`inventory.devices.*`) through the outbox, in the same transaction as the change. License
//! levels configured by tier-assignment (`tiers.devices.licensed`) are recorded the same way.

pub mod api;
pub mod licenses;
pub mod model;
pub mod store;

use tally_bus::{Bus, BusError, consumer::Delivery, consumer::HandlerError};
use tally_platform::SecretBox;
use tally_store::Pool;

/// Shared state of the inventory service.
#[derive(Clone)]
pub struct Inventory {
    pub pool: Pool,
    pub secrets: SecretBox,
}

pub use api::routes;

/// Durable consumer name shared by all replicas.
pub const DURABLE: &str = "inventory";

/// Runs the outbox relay and the consumer of license changes until the task is dropped.
pub async fn run(inv: Inventory, bus: Bus) -> Result<(), BusError> {
    let relay = tokio::spawn(tally_bus::relay::run(
        bus.clone(),
        inv.pool.clone(),
        tally_store::outbox::Schema::Inventory,
    ));
    let result = router(inv).run(bus, DURABLE).await;
    relay.abort();
    result
}

/// The events inventory consumes, each with its handler (the consumer's subjects and dispatch).
pub fn router(inv: Inventory) -> tally_bus::router::Router<Inventory> {
    use tally_bus::proto::DeviceLicensesChanged;
    tally_bus::router::Router::new(inv).on(|inv, id, ev: DeviceLicensesChanged| async move {
        let mut conn = inv
            .pool
            .get()
            .await
            .map_err(tally_store::StoreError::from)?;
        licenses::apply(&mut conn, &id, &ev).await
    })
}

/// Handles one delivery of the inventory consumer (idempotent: redeliveries change nothing).
pub async fn handle(inv: &Inventory, d: Delivery) -> Result<(), HandlerError> {
    router(inv.clone()).dispatch(d).await
}
