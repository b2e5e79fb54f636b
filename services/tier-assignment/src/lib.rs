//! tier-assignment: DNA Essentials/Advantage/Premier assignment against entitlement pools.
//! This release ships the tier catalogue; bulk assignment jobs arrive with the next issue.

use actix_web::{get, web};
use serde::Serialize;
use tally_domain::{DnaTier, NetworkLicense};
use utoipa::ToSchema;

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(catalogue);
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Catalogue {
    pub network_licenses: Vec<String>,
    pub dna_tiers: Vec<String>,
}

/// The license levels a device can be given (`license boot level <network> addon <dna>`).
#[utoipa::path(tag = "tiers", responses((status = 200, body = Catalogue)))]
#[get("/tiers/catalogue")]
async fn catalogue() -> web::Json<Catalogue> {
    web::Json(Catalogue {
        network_licenses: NetworkLicense::ALL.iter().map(|t| t.to_string()).collect(),
        dna_tiers: DnaTier::ALL.iter().map(|t| t.to_string()).collect(),
    })
}
