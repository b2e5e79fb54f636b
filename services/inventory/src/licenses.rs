//! License levels that tier-assignment configured on devices (`tiers.devices.licensed`): recorded
//! on the devices and republished as `DevicesUpserted`, in one transaction with the message id in
//! the inbox, so a redelivered message changes nothing.

use crate::store::devices::{self, CHUNK, DeviceRow, LicenseColumns};
use diesel_async::AsyncPgConnection;
use std::collections::{HashMap, HashSet};
use tally_bus::{consumer::HandlerError, proto};
use tally_domain::{DnaTier, NetworkLicense};
use tally_store::outbox::{Schema, once};
use uuid::Uuid;

/// Longest virtual account name inventory stores (as the API allows).
const MAX_VA_LEN: usize = 255;

/// One device's new levels, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Change {
    id: Uuid,
    network_license: &'static str,
    /// Empty for no DNA subscription.
    dna_tier: &'static str,
    /// Empty keeps the stored one: inventory never holds a device without a virtual account.
    virtual_account: String,
}

/// Checks every entry. A value that is not a device id or a level can never be applied, so the
/// whole message is poison; the same device twice keeps its last entry.
fn parse(ev: &proto::DeviceLicensesChanged) -> Result<Vec<Change>, HandlerError> {
    let mut out: Vec<Change> = Vec::with_capacity(ev.devices.len());
    let mut at: HashMap<Uuid, usize> = HashMap::with_capacity(ev.devices.len());
    for (i, d) in ev.devices.iter().enumerate() {
        let bad = |field: &str, e: &dyn std::fmt::Display| {
            HandlerError::Poison(format!("devices[{i}].{field}: {e}"))
        };
        let id = Uuid::parse_str(&d.device_id).map_err(|e| bad("device_id", &e))?;
        let network_license = d
            .network_license
            .parse::<NetworkLicense>()
            .map_err(|e| bad("network_license", &e))?
            .as_str();
        let dna_tier = match d.dna_tier.as_str() {
            "" => "",
            s => s
                .parse::<DnaTier>()
                .map_err(|e| bad("dna_tier", &e))?
                .as_str(),
        };
        if d.virtual_account.chars().count() > MAX_VA_LEN {
            return Err(bad(
                "virtual_account",
                &format!("is longer than {MAX_VA_LEN} characters"),
            ));
        }
        let change = Change {
            id,
            network_license,
            dna_tier,
            virtual_account: d.virtual_account.clone(),
        };
        match at.get(&id) {
            Some(&j) => out[j] = change,
            None => {
                at.insert(id, out.len());
                out.push(change);
            }
        }
    }
    Ok(out)
}

/// Records the levels of `ev` once per `msg_id`, with one `DevicesUpserted` per chunk of updated
/// devices. Devices inventory does not know (deleted since the job started) are skipped.
pub async fn apply(
    conn: &mut AsyncPgConnection,
    msg_id: &str,
    ev: &proto::DeviceLicensesChanged,
) -> Result<(), HandlerError> {
    let changes = parse(ev)?;
    once(conn, Schema::Inventory, msg_id, async |c| {
        let mut skipped = Vec::new();
        for chunk in changes.chunks(CHUNK) {
            let cols = LicenseColumns {
                id: chunk.iter().map(|ch| ch.id).collect(),
                network_license: chunk.iter().map(|ch| ch.network_license).collect(),
                dna_tier: chunk.iter().map(|ch| ch.dna_tier).collect(),
                virtual_account: chunk.iter().map(|ch| ch.virtual_account.as_str()).collect(),
            };
            let stored: Vec<DeviceRow> = devices::set_licenses(c, &cols).await?;
            if stored.len() < chunk.len() {
                let found: HashSet<Uuid> = stored.iter().map(|r| r.id).collect();
                skipped.extend(
                    chunk
                        .iter()
                        .map(|ch| ch.id)
                        .filter(|id| !found.contains(id)),
                );
            }
            if !stored.is_empty() {
                let event = proto::DevicesUpserted {
                    devices: stored.iter().map(devices::to_event).collect(),
                };
                tally_bus::emit(c, Schema::Inventory, &event).await?;
            }
        }
        if !skipped.is_empty() {
            tracing::warn!(
                msg_id,
                skipped = skipped.len(),
                first = %skipped[0],
                "license change names devices inventory does not know; skipped"
            );
        }
        Ok::<_, HandlerError>(())
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lic(id: &str, nl: &str, dna: &str, va: &str) -> proto::DeviceLicense {
        proto::DeviceLicense {
            device_id: id.into(),
            network_license: nl.into(),
            dna_tier: dna.into(),
            virtual_account: va.into(),
            job_id: "j1".into(),
        }
    }

    #[test]
    fn parses_levels_and_keeps_the_last_entry_per_device() {
        let a = Uuid::now_v7().to_string();
        let b = Uuid::now_v7().to_string();
        let ev = proto::DeviceLicensesChanged {
            devices: vec![
                lic(&a, "network-essentials", "", "Campus"),
                lic(&b, "network-advantage", "dna-advantage", ""),
                lic(&a, "network-advantage", "dna-premier", "Voice"),
            ],
        };
        let got = parse(&ev).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].id.to_string(), a);
        assert_eq!(
            (
                got[0].network_license,
                got[0].dna_tier,
                got[0].virtual_account.as_str()
            ),
            ("network-advantage", "dna-premier", "Voice")
        );
        assert_eq!(
            (got[1].dna_tier, got[1].virtual_account.as_str()),
            ("dna-advantage", "")
        );
    }

    #[test]
    fn bad_values_are_poison_naming_the_entry() {
        let id = Uuid::now_v7().to_string();
        for (d, want) in [
            (
                lic(&id, "network-gold", "", "v"),
                "devices[1].network_license",
            ),
            (
                lic(&id, "network-advantage", "dna-gold", "v"),
                "devices[1].dna_tier",
            ),
            (
                lic("nope", "network-advantage", "", "v"),
                "devices[1].device_id",
            ),
            (
                lic(&id, "network-advantage", "", &"v".repeat(256)),
                "devices[1].virtual_account",
            ),
        ] {
            let ev = proto::DeviceLicensesChanged {
                devices: vec![lic(&id, "network-essentials", "", "v"), d],
            };
            match parse(&ev) {
                Err(HandlerError::Poison(m)) => assert!(m.starts_with(want), "{m}"),
                other => panic!("{want}: {other:?}"),
            }
        }
    }
}
