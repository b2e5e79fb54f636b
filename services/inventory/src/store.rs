//! Database work of the inventory service: device upserts with their events, queries.

use crate::model::{DeviceRow, NewDevice, ValidDevice};
use crate::schema::{devices, sites};
use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tally_bus::proto;
use tally_platform::SecretBox;
use tally_store::outbox::Schema;
use uuid::Uuid;

/// Devices per event and per INSERT statement (well under Postgres' 65,535 parameters).
pub const CHUNK: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("database: {0}")]
    Db(#[from] diesel::result::Error),
    #[error("cannot seal credentials: {0}")]
    Seal(String),
    #[error("a device with UDI {0} already exists")]
    Duplicate(String),
}

pub fn to_event(r: &DeviceRow) -> proto::Device {
    proto::Device {
        device_id: r.id.to_string(),
        udi_pid: r.udi_pid.clone(),
        udi_serial: r.udi_serial.clone(),
        hostname: r.hostname.clone(),
        model: r.model.clone(),
        software_version: r.software_version.clone(),
        base_url: r.base_url.clone(),
        site: r.site.clone(),
        smart_account: r.smart_account.clone(),
        virtual_account: r.virtual_account.clone(),
        username: r.username.clone(),
        password_sealed: r.password_sealed.clone(),
        is_cube: r.is_cube,
        voice_role: r.voice_role.clone(),
        network_license: r.network_license.clone(),
        dna_tier: r.dna_tier.clone().unwrap_or_default(),
        revision: r.revision,
        groups: r.groups.clone(),
    }
}

fn new_device(v: &ValidDevice, id: Uuid, password_sealed: String) -> NewDevice {
    NewDevice {
        id,
        udi_pid: v.udi.udi_pid.clone(),
        udi_serial: v.udi.udi_serial_number.clone(),
        hostname: v.hostname.clone(),
        model: v.model.clone(),
        software_version: v.software_version.clone(),
        base_url: v.base_url.clone(),
        site: v.site.clone(),
        smart_account: v.smart_account.clone(),
        virtual_account: v.virtual_account.clone(),
        username: v.username.clone(),
        password_sealed,
        is_cube: v.is_cube,
        network_license: v.network_license.as_str().to_owned(),
        dna_tier: v.dna_tier.map(|t| t.as_str().to_owned()),
        groups: v.groups.clone(),
        voice_role: v.voice_role.clone(),
    }
}

/// Creates or updates (by UDI) every device in one transaction, with one event per chunk.
/// Devices without a password keep the stored one (a new device must have one: callers check).
/// Returns the rows as stored.
pub async fn upsert_all(
    conn: &mut AsyncPgConnection,
    secrets: &SecretBox,
    input: &[ValidDevice],
    create_only: bool,
) -> Result<Vec<DeviceRow>, InventoryError> {
    let mut sealed = Vec::with_capacity(input.len());
    for v in input {
        sealed.push(match &v.password {
            Some(p) => secrets
                .seal(p)
                .map_err(|e| InventoryError::Seal(e.to_string()))?,
            None => String::new(),
        });
    }
    conn.transaction(async |c| {
        let mut out = Vec::with_capacity(input.len());
        for (chunk, sealed) in input.chunks(CHUNK).zip(sealed.chunks(CHUNK)) {
            let rows: Vec<NewDevice> = chunk
                .iter()
                .zip(sealed)
                .map(|(v, s)| new_device(v, Uuid::now_v7(), s.clone()))
                .collect();
            let stored: Vec<DeviceRow> = if create_only {
                diesel::insert_into(devices::table)
                    .values(&rows)
                    .returning(DeviceRow::as_returning())
                    .get_results(c)
                    .await
                    .map_err(|e| match e {
                        diesel::result::Error::DatabaseError(
                            diesel::result::DatabaseErrorKind::UniqueViolation,
                            _,
                        ) => InventoryError::Duplicate(
                            chunk
                                .first()
                                .map(|d| d.udi.to_string())
                                .unwrap_or_default(),
                        ),
                        other => other.into(),
                    })?
            } else {
                diesel::insert_into(devices::table)
                    .values(&rows)
                    .on_conflict((devices::udi_pid, devices::udi_serial))
                    .do_update()
                    .set((
                        devices::hostname.eq(excluded(devices::hostname)),
                        devices::model.eq(excluded(devices::model)),
                        devices::software_version.eq(excluded(devices::software_version)),
                        devices::base_url.eq(excluded(devices::base_url)),
                        devices::site.eq(excluded(devices::site)),
                        devices::smart_account.eq(excluded(devices::smart_account)),
                        devices::virtual_account.eq(excluded(devices::virtual_account)),
                        devices::username.eq(excluded(devices::username)),
                        // An empty sealed password means "keep the stored one".
                        devices::password_sealed.eq(diesel::dsl::sql::<diesel::sql_types::Text>(
                            "COALESCE(NULLIF(excluded.password_sealed, ''), inventory.devices.password_sealed)",
                        )),
                        devices::is_cube.eq(excluded(devices::is_cube)),
                        devices::voice_role.eq(excluded(devices::voice_role)),
                        devices::network_license.eq(excluded(devices::network_license)),
                        devices::dna_tier.eq(excluded(devices::dna_tier)),
                        devices::groups.eq(excluded(devices::groups)),
                        devices::revision.eq(devices::revision + 1),
                        devices::updated_at.eq(diesel::dsl::now),
                    ))
                    .returning(DeviceRow::as_returning())
                    .get_results(c)
                    .await?
            };
            let event = proto::DevicesUpserted {
                devices: stored.iter().map(to_event).collect(),
            };
            tally_bus::emit(c, Schema::Inventory, &event).await?;
            out.extend(stored);
        }
        // Sites are created on first use, so filters by site work right after an import.
        let mut names: Vec<&str> = input.iter().map(|d| d.site.as_str()).filter(|s| !s.is_empty()).collect();
        names.sort_unstable();
        names.dedup();
        if !names.is_empty() {
            let rows: Vec<_> = names.iter().map(|n| sites::name.eq(*n)).collect();
            diesel::insert_into(sites::table)
                .values(&rows)
                .on_conflict_do_nothing()
                .execute(c)
                .await?;
        }
        Ok(out)
    })
    .await
}

/// Replaces one device by id (its UDI may change), publishing the new state.
pub async fn replace(
    conn: &mut AsyncPgConnection,
    secrets: &SecretBox,
    id: Uuid,
    v: &ValidDevice,
) -> Result<Option<DeviceRow>, InventoryError> {
    let sealed = match &v.password {
        Some(p) => Some(
            secrets
                .seal(p)
                .map_err(|e| InventoryError::Seal(e.to_string()))?,
        ),
        None => None,
    };
    conn.transaction(async |c| {
        let Some(current) = devices::table
            .find(id)
            .select(DeviceRow::as_select())
            .for_update()
            .first(c)
            .await
            .optional()?
        else {
            return Ok(None);
        };
        let mut row = new_device(v, id, sealed.clone().unwrap_or(current.password_sealed));
        row.id = id;
        let stored: DeviceRow = diesel::update(devices::table.find(id))
            .set((
                &row,
                devices::revision.eq(devices::revision + 1),
                devices::updated_at.eq(diesel::dsl::now),
            ))
            .returning(DeviceRow::as_returning())
            .get_result(c)
            .await
            .map_err(|e| match e {
                diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::UniqueViolation,
                    _,
                ) => InventoryError::Duplicate(v.udi.to_string()),
                other => other.into(),
            })?;
        tally_bus::emit(
            c,
            Schema::Inventory,
            &proto::DevicesUpserted {
                devices: vec![to_event(&stored)],
            },
        )
        .await?;
        Ok(Some(stored))
    })
    .await
}

pub async fn delete(conn: &mut AsyncPgConnection, id: Uuid) -> Result<bool, InventoryError> {
    conn.transaction(async |c| {
        let n = diesel::delete(devices::table.find(id)).execute(c).await?;
        if n == 1 {
            tally_bus::emit(
                c,
                Schema::Inventory,
                &proto::DevicesDeleted {
                    device_ids: vec![id.to_string()],
                },
            )
            .await?;
        }
        Ok(n == 1)
    })
    .await
}
