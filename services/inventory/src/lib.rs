//! inventory: the managed devices (UDI, model, site, smart/virtual account, management address,
//! sealed southbound credentials) and sites. Every change is published on NATS
//! (`inventory.devices.*`) through the outbox, in the same transaction as the change.

pub mod api;
pub mod model;
pub mod schema;
pub mod store;

use tally_platform::SecretBox;
use tally_store::Pool;

/// Shared state of the inventory service.
#[derive(Clone)]
pub struct Inventory {
    pub pool: Pool,
    pub secrets: SecretBox,
}

pub use api::routes;
