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
    use tally_bus::{Event, proto::DeviceLicensesChanged};
    let relay = tokio::spawn(tally_bus::relay::run(
        bus.clone(),
        inv.pool.clone(),
        tally_store::outbox::Schema::Inventory,
    ));
    let result = tally_bus::consumer::run(bus, DURABLE, &[DeviceLicensesChanged::SUBJECT], {
        move |d| {
            let inv = inv.clone();
            async move { handle(&inv, d).await }
        }
    })
    .await;
    relay.abort();
    result
}

/// Handles one delivery of the inventory consumer (idempotent: redeliveries change nothing).
pub async fn handle(inv: &Inventory, d: Delivery) -> Result<(), HandlerError> {
    use prost::Message;
    use tally_bus::{Event, proto::DeviceLicensesChanged};
    match d.subject.as_str() {
        DeviceLicensesChanged::SUBJECT => {
            let ev = DeviceLicensesChanged::decode(d.payload)?;
            let mut conn = inv
                .pool
                .get()
                .await
                .map_err(tally_store::StoreError::from)?;
            licenses::apply(&mut conn, &d.msg_id, &ev).await
        }
        other => Err(HandlerError::Poison(format!("unexpected subject {other}"))),
    }
}
