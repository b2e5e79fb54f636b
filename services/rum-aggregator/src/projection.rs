//! The aggregator's own copy of inventory's devices, kept from `inventory.devices.*` events.

use crate::Aggregator;
use crate::store::devices;
use diesel_async::AsyncConnection;
use tally_bus::{consumer::HandlerError, projection::Columns, proto};
use tally_store::outbox::{Schema, claim};

pub async fn upsert(
    agg: &Aggregator,
    msg_id: &str,
    ev: proto::DevicesUpserted,
) -> Result<(), HandlerError> {
    let cols = Columns::of(&ev);
    let ids = cols.ids()?;
    let mut conn = agg
        .pool
        .get()
        .await
        .map_err(tally_store::StoreError::from)?;
    conn.transaction(async |c| {
        if !claim(c, Schema::Rum, msg_id).await? {
            return Ok(());
        }
        devices::upsert(c, &ids, &cols).await?;
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
