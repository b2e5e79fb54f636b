//! What every service's copy of inventory's devices does the same way, in SQL.

use crate::outbox::Schema;
use diesel::sql_types::{Array, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// The schema keeps no copy of inventory's devices (inventory owns them; uplink has none).
#[derive(Debug, thiserror::Error)]
#[error("{} has no projection of inventory's devices", .0.as_str())]
pub struct NoDeviceProjection(pub Schema);

/// Marks the schema's `devices` rows deleted; returns how many rows it touched. Rows are kept
/// (history and references) and never brought back: inventory does not reuse ids.
pub async fn mark_devices_deleted(
    conn: &mut AsyncPgConnection,
    schema: Schema,
    ids: &[Uuid],
) -> Result<usize, diesel::result::Error> {
    // One statement per schema: the name is never pasted into SQL text.
    let sql = match schema {
        Schema::Rum => "UPDATE rum.devices SET deleted = true WHERE id = ANY($1)",
        Schema::Tiers => "UPDATE tiers.devices SET deleted = true WHERE id = ANY($1)",
        Schema::Sched => "UPDATE sched.devices SET deleted = true WHERE id = ANY($1)",
        Schema::Inventory | Schema::Uplink => {
            return Err(diesel::result::Error::QueryBuilderError(Box::new(
                NoDeviceProjection(schema),
            )));
        }
    };
    diesel::sql_query(sql)
        .bind::<Array<SqlUuid>, _>(ids)
        .execute(conn)
        .await
}
