//! inventory's devices as this service keeps them. The license columns (levels, virtual account,
//! pools held) are the ledger: taken from inventory when a device first appears, owned by
//! tier-assignment after that, so a late or replayed inventory event never undoes a job.

use crate::Tiers;
use crate::store::{self, devices};
use tally_bus::{consumer::HandlerError, projection::Columns, proto};
use tally_domain::{
    DnaTier, NetworkLicense,
    rules::{Level, Rules},
};
use tally_store::outbox::{Schema, once};

/// The licenses a device holds for its levels under `rules` (none if its levels are unknown or
/// no license fits its model: the device then draws on no pool until a job gives it one).
pub fn holdings(rules: &Rules, d: &proto::Device) -> (Option<String>, Option<String>) {
    let network = d
        .network_license
        .parse::<NetworkLicense>()
        .ok()
        .and_then(|n| rules.license_for(&d.model, Level::Network(n)))
        .map(|l| l.name.clone());
    let dna = d
        .dna_tier
        .parse::<DnaTier>()
        .ok()
        .and_then(|t| rules.license_for(&d.model, Level::Dna(t)))
        .map(|l| l.name.clone());
    (network, dna)
}

pub async fn upsert(
    t: &Tiers,
    msg_id: &str,
    ev: proto::DevicesUpserted,
) -> Result<(), HandlerError> {
    let cols = Columns::of(&ev);
    let ids = cols.ids()?;
    let mut conn = t.pool.get().await.map_err(tally_store::StoreError::from)?;
    once(&mut conn, Schema::Tiers, msg_id, async |c| {
        let rules = store::load_rules(c).await?.rules;
        let (net_pools, dna_pools): (Vec<Option<String>>, Vec<Option<String>>) =
            ev.devices.iter().map(|d| holdings(&rules, d)).unzip();
        devices::upsert(c, &ids, &cols, &net_pools, &dna_pools).await?;
        Ok::<_, HandlerError>(())
    })
    .await?;
    Ok(())
}

pub async fn delete(
    t: &Tiers,
    msg_id: &str,
    ev: proto::DevicesDeleted,
) -> Result<(), HandlerError> {
    tally_bus::projection::delete_devices(&t.pool, Schema::Tiers, msg_id, &ev).await
}
