//! The scheduler's copy of the fleet (`sched.devices`), kept from inventory's events, with when
//! each device last had its usage acknowledged by CSSM and last installed an ACK.

use crate::Scheduler;
use crate::deadlines::refresh_ids;
use crate::store::{devices, pools};
use diesel_async::AsyncPgConnection;
use tally_bus::{consumer::HandlerError, projection::Columns, proto};
use tally_store::outbox::{Schema, once};
use uuid::Uuid;

pub async fn upsert(
    s: &Scheduler,
    msg_id: &str,
    ev: proto::DevicesUpserted,
) -> Result<(), HandlerError> {
    let cols = Columns::of(&ev);
    let ids = cols.ids()?;
    let now = s.now();
    let mut conn = s.pool.get().await.map_err(tally_store::StoreError::from)?;
    once(&mut conn, Schema::Sched, msg_id, async |c| {
        devices::upsert(c, &ids, &cols).await?;
        pools::flag_devices(c, &ids).await?;
        refresh_ids(c, &ids, now).await?;
        Ok::<_, HandlerError>(())
    })
    .await?;
    Ok(())
}

pub async fn delete(
    s: &Scheduler,
    msg_id: &str,
    ev: proto::DevicesDeleted,
) -> Result<(), HandlerError> {
    tally_bus::projection::delete_devices(&s.pool, Schema::Sched, msg_id, &ev).await
}

/// CSSM answered an upload of these devices' usage (the ACKs are on their way to the devices).
pub async fn acks_received(
    s: &Scheduler,
    msg_id: &str,
    ev: proto::AcksReceived,
) -> Result<(), HandlerError> {
    let ids: Vec<Uuid> = ev
        .acks
        .iter()
        .filter_map(|a| Uuid::parse_str(&a.device_id).ok())
        .collect();
    let now = s.now();
    let mut conn = s.pool.get().await.map_err(tally_store::StoreError::from)?;
    once(&mut conn, Schema::Sched, msg_id, async |c| {
        devices::mark_uploaded(c, &ids).await?;
        refresh_ids(c, &ids, now).await?;
        Ok::<_, HandlerError>(())
    })
    .await?;
    Ok(())
}

/// These devices installed an ACK now: their reporting deadline restarts (and is computed
/// again at `now`, the scheduler's clock).
pub async fn acks_installed(
    c: &mut AsyncPgConnection,
    devices: &[Uuid],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), diesel::result::Error> {
    if devices.is_empty() {
        return Ok(());
    }
    devices::mark_acked(c, devices).await?;
    refresh_ids(c, devices, now).await?;
    Ok(())
}
