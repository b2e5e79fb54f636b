//! The aggregator's own copy of inventory's devices, kept from `inventory.devices.*` events.

use crate::Aggregator;
use diesel::sql_types::{Array, Int8, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, RunQueryDsl};
use tally_bus::{consumer::HandlerError, projection::Columns, proto};
use tally_store::outbox::{Schema, claim};

pub async fn upsert(
    agg: &Aggregator,
    msg_id: &str,
    ev: proto::DevicesUpserted,
) -> Result<(), HandlerError> {
    let cols = Columns::of(&ev);
    let ids = cols.ids()?;
    let col = |f| cols.text(f);
    let mut conn = agg
        .pool
        .get()
        .await
        .map_err(tally_store::StoreError::from)?;
    conn.transaction(async |c| {
        if !claim(c, Schema::Rum, msg_id).await? {
            return Ok(());
        }
        // Newer revisions win, so events arriving out of order cannot roll a device back.
        diesel::sql_query(
            "INSERT INTO rum.devices (id, udi_pid, udi_serial, hostname, base_url, smart_account, \
             virtual_account, username, password_sealed, revision) \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::text[], $7::text[], $8::text[], $9::text[], $10::int8[]) \
             ON CONFLICT (id) DO UPDATE SET udi_pid = excluded.udi_pid, udi_serial = excluded.udi_serial, \
             hostname = excluded.hostname, base_url = excluded.base_url, smart_account = excluded.smart_account, \
             virtual_account = excluded.virtual_account, username = excluded.username, \
             password_sealed = excluded.password_sealed, revision = excluded.revision, deleted = false \
             WHERE rum.devices.revision < excluded.revision",
        )
        .bind::<Array<SqlUuid>, _>(&ids)
        .bind::<Array<Text>, _>(col(|d| &d.udi_pid))
        .bind::<Array<Text>, _>(col(|d| &d.udi_serial))
        .bind::<Array<Text>, _>(col(|d| &d.hostname))
        .bind::<Array<Text>, _>(col(|d| &d.base_url))
        .bind::<Array<Text>, _>(col(|d| &d.smart_account))
        .bind::<Array<Text>, _>(col(|d| &d.virtual_account))
        .bind::<Array<Text>, _>(col(|d| &d.username))
        .bind::<Array<Text>, _>(col(|d| &d.password_sealed))
        .bind::<Array<Int8>, _>(cols.revisions())
        .execute(c)
        .await?;
        Ok::<_, HandlerError>(())
    })
    .await
}

pub async fn delete(
    agg: &Aggregator,
    msg_id: &str,
    ev: proto::DevicesDeleted,
) -> Result<(), HandlerError> {
    tally_bus::projection::delete_devices(&agg.pool, Schema::Rum, msg_id, &ev).await
}
