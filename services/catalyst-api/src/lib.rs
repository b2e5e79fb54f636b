//! catalyst-api: the Catalyst Center (DNA Center) licensing Intent API, so automation written for
//! Catalyst Center (the `dnacentersdk` Python SDK, Ansible `cisco.dnac`, Terraform `dnacenter`)
//! works against Tally unchanged. Field names and types follow what those SDKs read
//! (docs/catalyst.md).
//!
//! A northbound adapter (docs/adr/0003-catalyst-adapter.md): it owns no schema, and reads and
//! writes through the renewal scheduler's store (`store::catalyst`: its fleet copy, pools and
//! the `sched.catalyst_tasks` it keeps for this API). Auth is Catalyst Center's own
//! `X-Auth-Token` ([`tally_platform::catalyst_token`]). Routes sit at the root (`/dna/...`),
//! not under `/api/v1`.

mod devices;
mod licenses;
mod tasks;

pub use tasks::transfer_accepted;

use chrono::{DateTime, Utc};
use tally_bus::Bus;
use tally_store::Pool;

/// The durable consumer of this adapter's events (tier-assignment's answers to transfers).
pub const DURABLE: &str = "catalyst-api";

/// The tag of every route in the OpenAPI document.
pub const TAG: &str = "catalyst";

#[derive(Clone)]
pub struct Catalyst {
    pub pool: Pool,
    pub bus: Bus,
    /// Added to the clock when the deadline engine runs before a read, as the scheduler does
    /// (`TALLY_CLOCK_OFFSET_SECS`: drills and tests).
    pub clock_offset: chrono::TimeDelta,
}

impl Catalyst {
    /// The clock the deadline engine runs at: real time plus the configured drill offset.
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.clock_offset
    }
}

/// Every `/dna/...` route, documented under the `catalyst` tag. Mount at the root of the app,
/// with `web::Data<Catalyst>`, `web::Data<ApiTokens>` and `web::Data<TokenKey>`.
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(tasks::auth_token)
        .service(devices::device_count)
        .service(devices::device_summary)
        .service(devices::device_details)
        .service(licenses::smart_accounts)
        .service(licenses::virtual_accounts)
        .service(licenses::network_summary)
        .service(licenses::license_terms)
        .service(licenses::license_usage)
        .service(tasks::transfer)
        .service(tasks::transfer_put)
        .service(tasks::register)
        .service(tasks::deregister)
        .service(tasks::get_task);
}

/// Adds the two security schemes the Catalyst routes name: HTTP Basic (for the token) and the
/// `X-Auth-Token` header (for every other call).
pub struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "catalyst-basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
        components.add_security_scheme(
            "x-auth-token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Auth-Token"))),
        );
    }
}

/// Consumes tier-assignment's answers to transfers until dropped. Its writes go to the
/// scheduler's tables; the scheduler's relay publishes what lands in its outbox.
pub async fn run(c: Catalyst) -> Result<(), tally_bus::BusError> {
    use tally_bus::proto::TransferAccepted;
    let bus = c.bus.clone();
    tally_bus::router::Router::new(c)
        .on(|c: Catalyst, id: String, ev: TransferAccepted| async move {
            transfer_accepted(&c, &id, ev).await
        })
        .run(bus, DURABLE)
        .await
}
