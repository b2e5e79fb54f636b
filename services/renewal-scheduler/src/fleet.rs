//! The scheduler's copy of the fleet (`sched.devices`), kept from inventory's events, with when
//! each device last had its usage acknowledged by CSSM and last installed an ACK.

use crate::Scheduler;
use diesel::sql_types::{Array, Bool, Int8, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tally_bus::{consumer::HandlerError, projection::Columns, proto};
use tally_store::outbox::{Schema, claim};
use uuid::Uuid;

pub async fn upsert(
    s: &Scheduler,
    msg_id: &str,
    ev: proto::DevicesUpserted,
) -> Result<(), HandlerError> {
    let cols = Columns::of(&ev);
    let ids = cols.ids()?;
    let col = |f| cols.text(f);
    let groups = cols.groups_json();
    let dna = cols.dna_tiers();
    let mut conn = s.pool.get().await.map_err(tally_store::StoreError::from)?;
    conn.transaction(async |c| {
        if !claim(c, Schema::Sched, msg_id).await? {
            return Ok(());
        }
        // Newer revisions win; a deleted device is not brought back (ids are never reused).
        diesel::sql_query(
            "INSERT INTO sched.devices (id, hostname, udi_pid, udi_serial, model, software_version, \
             base_url, site, groups, smart_account, virtual_account, is_cube, network_license, \
             dna_tier, revision, voice_role) \
             SELECT u.id, u.h, u.pid, u.sn, u.m, u.sw, u.url, u.site, \
             ARRAY(SELECT jsonb_array_elements_text(u.g::jsonb)), u.sa, u.va, u.cube, u.net, u.dna, u.rev, \
             CASE WHEN u.vr = '' AND u.cube THEN 'cube' ELSE u.vr END \
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
             $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::bool[], $13::text[], \
             $14::text[], $15::int8[], $16::text[]) \
             AS u(id, h, pid, sn, m, sw, url, site, g, sa, va, cube, net, dna, rev, vr) \
             ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname, udi_pid = excluded.udi_pid, \
             udi_serial = excluded.udi_serial, model = excluded.model, \
             software_version = excluded.software_version, base_url = excluded.base_url, \
             site = excluded.site, groups = excluded.groups, smart_account = excluded.smart_account, \
             virtual_account = excluded.virtual_account, is_cube = excluded.is_cube, \
             network_license = excluded.network_license, dna_tier = excluded.dna_tier, \
             voice_role = excluded.voice_role, \
             revision = excluded.revision, updated_at = now() \
             WHERE sched.devices.revision < excluded.revision AND NOT sched.devices.deleted",
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
        .bind::<Array<Text>, _>(col(|d| &d.smart_account))
        .bind::<Array<Text>, _>(col(|d| &d.virtual_account))
        .bind::<Array<Bool>, _>(cols.is_cube())
        .bind::<Array<Text>, _>(col(|d| &d.network_license))
        .bind::<Array<Nullable<Text>>, _>(&dna)
        .bind::<Array<Int8>, _>(cols.revisions())
        .bind::<Array<Text>, _>(col(|d| &d.voice_role))
        .execute(c)
        .await?;
        crate::pools::flag_devices(c, &ids).await?;
        crate::compliance::refresh_ids(c, &ids, crate::compliance::clock(s)).await?;
        Ok::<_, HandlerError>(())
    })
    .await
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
    let mut conn = s.pool.get().await.map_err(tally_store::StoreError::from)?;
    conn.transaction(async |c| {
        if !claim(c, Schema::Sched, msg_id).await? {
            return Ok(());
        }
        diesel::sql_query("UPDATE sched.devices SET last_upload_at = now() WHERE id = ANY($1)")
            .bind::<Array<SqlUuid>, _>(&ids)
            .execute(c)
            .await?;
        crate::compliance::refresh_ids(c, &ids, crate::compliance::clock(s)).await?;
        Ok::<_, HandlerError>(())
    })
    .await
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
    diesel::sql_query("UPDATE sched.devices SET last_ack_at = now() WHERE id = ANY($1)")
        .bind::<Array<SqlUuid>, _>(devices)
        .execute(c)
        .await?;
    crate::compliance::refresh_ids(c, devices, now).await?;
    Ok(())
}
