//! What every service's copy of inventory's devices does the same way.

use crate::{consumer::HandlerError, proto};
use diesel::sql_types::{Array, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, RunQueryDsl};
use tally_store::outbox::{Schema, claim};
use uuid::Uuid;

/// A device id from an event; one that does not parse can never succeed.
pub fn device_id(s: &str) -> Result<Uuid, HandlerError> {
    Uuid::parse_str(s).map_err(|e| HandlerError::Poison(format!("device id {s:?}: {e}")))
}

/// Marks `<schema>.devices` rows deleted, once per message. Rows are kept (history and
/// references) and never brought back: inventory does not reuse ids.
pub async fn delete_devices(
    pool: &tally_store::Pool,
    schema: Schema,
    msg_id: &str,
    ev: &proto::DevicesDeleted,
) -> Result<(), HandlerError> {
    let ids = ev
        .device_ids
        .iter()
        .map(|d| device_id(d))
        .collect::<Result<Vec<_>, _>>()?;
    let mut conn = pool.get().await.map_err(tally_store::StoreError::from)?;
    conn.transaction(async |c| {
        if !claim(c, schema, msg_id).await? {
            return Ok(());
        }
        diesel::sql_query(format!(
            "UPDATE {}.devices SET deleted = true WHERE id = ANY($1)",
            schema.as_str()
        ))
        .bind::<Array<SqlUuid>, _>(&ids)
        .execute(c)
        .await?;
        Ok::<_, HandlerError>(())
    })
    .await
}
