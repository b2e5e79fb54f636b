//! `inventory.devices`: upserts with their events in one transaction, license levels, reads.

use super::InventoryError;
use super::schema::inventory::{devices, sites};
use crate::model::ValidDevice;
use chrono::{DateTime, Utc};
use diesel::deserialize::{self, FromSql};
use diesel::pg::{Pg, PgValue};
use diesel::prelude::*;
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::{Array, Nullable, Text, Uuid as SqlUuid};
use diesel::upsert::excluded;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tally_bus::proto;
use tally_platform::SecretBox;
use tally_store::outbox::Schema;
use uuid::Uuid;

/// Devices per event and per INSERT statement (well under Postgres' 65,535 parameters).
pub const CHUNK: usize = 1000;

/// A device's group names as the `text[]` column holds them. The generated schema types the
/// elements as nullable (Postgres cannot declare them otherwise); inventory never writes a NULL
/// name, and reading one is an error rather than a silently dropped group.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    diesel::expression::AsExpression,
    diesel::deserialize::FromSqlRow,
)]
#[diesel(sql_type = Array<Nullable<Text>>)]
pub struct Groups(pub Vec<String>);

impl From<Vec<String>> for Groups {
    fn from(v: Vec<String>) -> Self {
        Self(v)
    }
}

impl From<Groups> for Vec<String> {
    fn from(g: Groups) -> Self {
        g.0
    }
}

impl FromSql<Array<Nullable<Text>>, Pg> for Groups {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        let names = <Vec<Option<String>> as FromSql<Array<Nullable<Text>>, Pg>>::from_sql(bytes)?;
        names
            .into_iter()
            .map(|n| n.ok_or_else(|| "a device's groups hold a NULL name".into()))
            .collect::<deserialize::Result<Vec<String>>>()
            .map(Self)
    }
}

impl ToSql<Array<Nullable<Text>>, Pg> for Groups {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        let names: Vec<Option<&str>> = self.0.iter().map(|n| Some(n.as_str())).collect();
        <Vec<Option<&str>> as ToSql<Array<Nullable<Text>>, Pg>>::to_sql(&names, &mut out.reborrow())
    }
}

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = devices, check_for_backend(Pg))]
pub struct DeviceRow {
    pub id: Uuid,
    pub udi_pid: String,
    pub udi_serial: String,
    pub hostname: String,
    pub model: String,
    pub software_version: String,
    pub base_url: String,
    pub site: String,
    pub smart_account: String,
    pub virtual_account: String,
    pub username: String,
    pub password_sealed: String,
    pub is_cube: bool,
    pub network_license: String,
    pub dna_tier: Option<String>,
    pub revision: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[diesel(deserialize_as = Groups)]
    pub groups: Vec<String>,
    pub voice_role: String,
}

#[derive(Debug, Clone, Insertable, AsChangeset)]
#[diesel(table_name = devices, check_for_backend(Pg))]
pub struct NewDevice {
    pub id: Uuid,
    pub udi_pid: String,
    pub udi_serial: String,
    pub hostname: String,
    pub model: String,
    pub software_version: String,
    pub base_url: String,
    pub site: String,
    pub smart_account: String,
    pub virtual_account: String,
    pub username: String,
    pub password_sealed: String,
    pub is_cube: bool,
    pub network_license: String,
    #[diesel(treat_none_as_null = true)]
    pub dna_tier: Option<String>,
    #[diesel(serialize_as = Groups)]
    pub groups: Vec<String>,
    pub voice_role: String,
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
                    .values(rows)
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
                    .values(rows)
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
                row,
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

/// What a device list is narrowed to; every given field must match.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filter<'a> {
    pub site: Option<&'a str>,
    pub model: Option<&'a str>,
    pub smart_account: Option<&'a str>,
    pub virtual_account: Option<&'a str>,
    /// Devices in this group.
    pub group: Option<&'a str>,
    /// Substring of hostname or serial number.
    pub q: Option<&'a str>,
}

fn filtered<'a>(f: &Filter<'a>) -> devices::BoxedQuery<'a, Pg> {
    let mut q = devices::table.into_boxed();
    if let Some(v) = f.site {
        q = q.filter(devices::site.eq(v));
    }
    if let Some(v) = f.model {
        q = q.filter(devices::model.eq(v));
    }
    if let Some(v) = f.smart_account {
        q = q.filter(devices::smart_account.eq(v));
    }
    if let Some(v) = f.virtual_account {
        q = q.filter(devices::virtual_account.eq(v));
    }
    if let Some(v) = f.group {
        // `@>` so that the GIN index on groups serves the filter.
        q = q.filter(devices::groups.contains(Groups(vec![v.to_owned()])));
    }
    if let Some(v) = f.q {
        let pat = format!("%{}%", v.replace('%', "\\%").replace('_', "\\_"));
        q = q.filter(
            devices::hostname
                .ilike(pat.clone())
                .or(devices::udi_serial.ilike(pat)),
        );
    }
    q
}

/// How many devices match.
pub async fn count(conn: &mut AsyncPgConnection, f: &Filter<'_>) -> QueryResult<i64> {
    filtered(f).count().get_result(conn).await
}

/// A page of the matching devices, by hostname then id.
pub async fn list(
    conn: &mut AsyncPgConnection,
    f: &Filter<'_>,
    limit: i64,
    offset: i64,
) -> QueryResult<Vec<DeviceRow>> {
    filtered(f)
        .order((devices::hostname, devices::id))
        .limit(limit)
        .offset(offset)
        .select(DeviceRow::as_select())
        .load(conn)
        .await
}

/// One device by id.
pub async fn get(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<DeviceRow>> {
    devices::table
        .find(id)
        .select(DeviceRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// New license levels of devices as columns, for one `UPDATE ... FROM unnest(...)`. An empty
/// DNA tier means none; an empty virtual account keeps the stored one.
#[derive(Debug, Default)]
pub struct LicenseColumns<'a> {
    pub id: Vec<Uuid>,
    pub network_license: Vec<&'a str>,
    pub dna_tier: Vec<&'a str>,
    pub virtual_account: Vec<&'a str>,
}

/// Records the levels and bumps each device's revision; returns the devices as stored (ids
/// inventory does not know are skipped).
pub async fn set_licenses(
    conn: &mut AsyncPgConnection,
    cols: &LicenseColumns<'_>,
) -> QueryResult<Vec<DeviceRow>> {
    diesel::sql_query(include_str!("sql/set_licenses.sql"))
        .bind::<Array<SqlUuid>, _>(&cols.id)
        .bind::<Array<Text>, _>(&cols.network_license)
        .bind::<Array<Text>, _>(&cols.dna_tier)
        .bind::<Array<Text>, _>(&cols.virtual_account)
        .load(conn)
        .await
}
