//! `rum.devices`: the aggregator's copy of inventory's devices.

use super::schema::rum::devices;
use diesel::prelude::*;
use diesel::sql_types::{Array, Int8, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use tally_bus::projection::Columns;
use tally_domain::Udi;
use uuid::Uuid;

/// Writes a `DevicesUpserted` chunk (`ids` are its parsed device ids). Newer revisions win, so
/// events arriving out of order cannot roll a device back; an upsert brings a device back.
pub async fn upsert(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    cols: &Columns<'_>,
) -> QueryResult<usize> {
    let col = |f| cols.text(f);
    diesel::sql_query(include_str!("sql/upsert_devices.sql"))
        .bind::<Array<SqlUuid>, _>(ids)
        .bind::<Array<Text>, _>(col(|d| &d.udi_pid))
        .bind::<Array<Text>, _>(col(|d| &d.udi_serial))
        .bind::<Array<Text>, _>(col(|d| &d.hostname))
        .bind::<Array<Text>, _>(col(|d| &d.base_url))
        .bind::<Array<Text>, _>(col(|d| &d.smart_account))
        .bind::<Array<Text>, _>(col(|d| &d.virtual_account))
        .bind::<Array<Text>, _>(col(|d| &d.username))
        .bind::<Array<Text>, _>(col(|d| &d.password_sealed))
        .bind::<Array<Int8>, _>(cols.revisions())
        .execute(conn)
        .await
}

/// A device a report file may be uploaded for.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = devices, check_for_backend(diesel::pg::Pg))]
pub struct KnownDevice {
    pub id: Uuid,
    pub udi_pid: String,
    pub udi_serial: String,
    pub smart_account: String,
    pub virtual_account: String,
}

/// The devices (not deleted) among `udis`; UDIs the aggregator does not know are left out.
pub async fn known_by_udi(
    conn: &mut AsyncPgConnection,
    udis: &[Udi],
) -> QueryResult<Vec<KnownDevice>> {
    let keys: Vec<String> = udis
        .iter()
        .map(|u| format!("{}:{}", u.udi_pid, u.udi_serial_number))
        .collect();
    devices::table
        .filter(diesel::dsl::not(devices::deleted))
        .filter(
            devices::udi_pid
                .concat(":")
                .concat(devices::udi_serial)
                .eq_any(keys),
        )
        .select(KnownDevice::as_select())
        .load(conn)
        .await
}
