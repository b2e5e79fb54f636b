//! inventory's devices as this service keeps them. The license columns (levels, virtual account,
//! pools held) are the ledger: taken from inventory when a device first appears, owned by
//! tier-assignment after that, so a late or replayed inventory event never undoes a job.

use crate::{Tiers, store};
use diesel::sql_types::{Array, Bool, Int8, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, RunQueryDsl};
use tally_bus::{consumer::HandlerError, projection::Columns, proto};
use tally_domain::{
    DnaTier, NetworkLicense,
    rules::{Level, Rules},
};
use tally_store::outbox::{Schema, claim};

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
    let col = |f| cols.text(f);
    let groups = cols.groups_json();
    let mut conn = t.pool.get().await.map_err(tally_store::StoreError::from)?;
    conn.transaction(async |c| {
        if !claim(c, Schema::Tiers, msg_id).await? {
            return Ok(());
        }
        let rules = store::load_rules(c).await?.rules;
        let (net_pools, dna_pools): (Vec<Option<String>>, Vec<Option<String>>) =
            ev.devices.iter().map(|d| holdings(&rules, d)).unzip();
        let dna = cols.dna_tiers();
        // Newer revisions win; the ledger columns are only written for new devices.
        diesel::sql_query(
            "INSERT INTO tiers.devices (id, hostname, udi_pid, udi_serial, model, software_version, \
             base_url, site, groups, username, password_sealed, is_cube, revision, smart_account, \
             virtual_account, network_license, dna_tier, network_pool, dna_pool) \
             SELECT u.id, u.hostname, u.pid, u.serial, u.model, u.sw, u.url, u.site, \
             ARRAY(SELECT jsonb_array_elements_text(u.groups::jsonb)), u.username, u.pw, u.cube, \
             u.rev, u.sa, u.va, u.net, u.dna, u.np, u.dp \
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
             $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::bool[], $13::int8[], \
             $14::text[], $15::text[], $16::text[], $17::text[], $18::text[], $19::text[]) \
             AS u(id, hostname, pid, serial, model, sw, url, site, groups, username, pw, cube, rev, \
             sa, va, net, dna, np, dp) \
             ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname, udi_pid = excluded.udi_pid, \
             udi_serial = excluded.udi_serial, model = excluded.model, \
             software_version = excluded.software_version, base_url = excluded.base_url, \
             site = excluded.site, groups = excluded.groups, username = excluded.username, \
             password_sealed = excluded.password_sealed, is_cube = excluded.is_cube, \
             revision = excluded.revision \
             WHERE tiers.devices.revision < excluded.revision",
        )
        .bind::<Array<SqlUuid>, _>(&ids)
        .bind::<Array<Text>, _>(col(|d| &d.hostname))
        .bind::<Array<Text>, _>(col(|d| &d.udi_pid))
        .bind::<Array<Text>, _>(col(|d| &d.udi_serial))
        .bind::<Array<Text>, _>(col(|d| &d.model))
        .bind::<Array<Text>, _>(col(|d| &d.software_version))
        .bind::<Array<Text>, _>(col(|d| &d.base_url))
        .bind::<Array<Text>, _>(col(|d| &d.site))
        .bind::<Array<Text>, _>(&groups)
        .bind::<Array<Text>, _>(col(|d| &d.username))
        .bind::<Array<Text>, _>(col(|d| &d.password_sealed))
        .bind::<Array<Bool>, _>(cols.is_cube())
        .bind::<Array<Int8>, _>(cols.revisions())
        .bind::<Array<Text>, _>(col(|d| &d.smart_account))
        .bind::<Array<Text>, _>(col(|d| &d.virtual_account))
        .bind::<Array<Text>, _>(col(|d| &d.network_license))
        .bind::<Array<Nullable<Text>>, _>(&dna)
        .bind::<Array<Nullable<Text>>, _>(&net_pools)
        .bind::<Array<Nullable<Text>>, _>(&dna_pools)
        .execute(c)
        .await?;
        Ok::<_, HandlerError>(())
    })
    .await
}

pub async fn delete(
    t: &Tiers,
    msg_id: &str,
    ev: proto::DevicesDeleted,
) -> Result<(), HandlerError> {
    tally_bus::projection::delete_devices(&t.pool, Schema::Tiers, msg_id, &ev).await
}
