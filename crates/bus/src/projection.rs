//! What every service's copy of inventory's devices does the same way.

use crate::{consumer::HandlerError, proto};
use tally_store::outbox::{Schema, once};
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
    once(&mut conn, schema, msg_id, async |c| {
        tally_store::projection::mark_devices_deleted(c, schema, &ids).await?;
        Ok::<_, HandlerError>(())
    })
    .await?;
    Ok(())
}

/// The columns of a `DevicesUpserted` chunk, as arrays for one `unnest` statement.
pub struct Columns<'a> {
    ev: &'a proto::DevicesUpserted,
}

impl<'a> Columns<'a> {
    pub fn of(ev: &'a proto::DevicesUpserted) -> Self {
        Self { ev }
    }
    /// Every device id; one that does not parse makes the message poison.
    pub fn ids(&self) -> Result<Vec<Uuid>, HandlerError> {
        self.ev
            .devices
            .iter()
            .map(|d| device_id(&d.device_id))
            .collect()
    }
    pub fn text(&self, f: fn(&proto::Device) -> &str) -> Vec<String> {
        self.ev.devices.iter().map(|d| f(d).to_owned()).collect()
    }
    pub fn revisions(&self) -> Vec<i64> {
        self.ev.devices.iter().map(|d| d.revision).collect()
    }
    pub fn is_cube(&self) -> Vec<bool> {
        self.ev.devices.iter().map(|d| d.is_cube).collect()
    }
    /// Groups as JSON arrays (SQL turns each back into `text[]`; arrays of arrays cannot be bound).
    pub fn groups_json(&self) -> Vec<String> {
        self.ev
            .devices
            .iter()
            .map(|d| serde_json::to_string(&d.groups).unwrap_or_else(|_| "[]".into()))
            .collect()
    }
    /// DNA tiers, `None` where the device has none.
    pub fn dna_tiers(&self) -> Vec<Option<String>> {
        self.ev
            .devices
            .iter()
            .map(|d| (!d.dna_tier.is_empty()).then(|| d.dna_tier.clone()))
            .collect()
    }
}
