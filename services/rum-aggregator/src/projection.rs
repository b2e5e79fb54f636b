//! The aggregator's own copy of inventory's devices, kept from `inventory.devices.*` events.

use crate::Aggregator;
use crate::store::devices;
use tally_bus::{consumer::HandlerError, projection::Columns, proto};
use tally_store::outbox::{Schema, once};

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
    once(&mut conn, Schema::Rum, msg_id, async |c| {
        devices::upsert(c, &ids, &cols).await?;
        Ok::<_, HandlerError>(())
    })
    .await?;
    Ok(())
}

pub async fn delete(
    agg: &Aggregator,
    msg_id: &str,
    ev: proto::DevicesDeleted,
) -> Result<(), HandlerError> {
    tally_bus::projection::delete_devices(&agg.pool, Schema::Rum, msg_id, &ev).await
}
