//! Offline path for air-gapped sites: export pending reports as a `UD_SA_*.tar.gz` bundle (kept
//! in `uplink.exports` until its ACKs are in, so it can be downloaded again), and take CSSM's ACK
//! bundle back. File names carry Tally's device id, which routes each ACK home; a file without
//! one goes by a UDI written in it. ACK documents are opaque: only the `<smartLicense>` root is
//! checked, the device judges the rest (docs/interop.md).

use crate::Uplink;
use crate::store::batches::{self, NewBatch};
use crate::store::exports::{self, NewExport};
use crate::store::reports::{self, BatchReport};
use crate::store::{BatchMode, BatchState, acks};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use tally_bus::proto;
use tally_domain::bundle::{self, DeviceFile, UsageBundle, VaUsage};
use tally_domain::{Udi, rum};
use tally_platform::{FieldError, Problem};
use tally_store::outbox::Schema;
use uuid::Uuid;

pub struct Export {
    pub id: Uuid,
    pub file_name: String,
    pub bytes: Vec<u8>,
    pub reports: usize,
    pub devices: usize,
    /// `smart account / virtual account` pairs the directory had no ids for: the manifest
    /// carries their names in the id fields.
    pub names_without_ids: Vec<String>,
}

/// Builds the usage bundle of every pending report of `smart_account` (or of the only smart
/// account with pending reports) and marks those reports exported, in one transaction.
pub async fn export(up: &Uplink, smart_account: Option<&str>) -> Result<Export, Problem> {
    let mut conn = tally_platform::problem::conn(&up.pool).await?;
    let created_by = up.cfg.created_by.clone();
    let sa_filter = smart_account.map(str::to_owned);
    conn.transaction(async |c| {
        let groups = reports::pending_accounts(c).await?;
        let mut sas: Vec<&str> = groups.iter().map(|g| g.smart_account.as_str()).collect();
        sas.dedup();
        let sa = match (&sa_filter, sas.as_slice()) {
            (Some(s), _) if sas.contains(&s.as_str()) => s.clone(),
            (Some(s), _) => {
                return Err(Problem::not_found("pending reports for smart account", s));
            }
            (None, []) => {
                return Err(Problem::conflict(
                    "nothing-to-export",
                    "no reports are waiting for upload",
                ));
            }
            (None, [one]) => (*one).to_owned(),
            (None, many) => {
                return Err(Problem::validation(vec![FieldError {
                    field: "smart_account".into(),
                    message: format!(
                        "several smart accounts have pending reports ({}); name one",
                        many.join(", ")
                    ),
                }]));
            }
        };
        let ts = chrono::Utc::now().timestamp();
        let mut bundle = UsageBundle {
            created_by,
            sa_name: sa.clone(),
            sa_id: sa.clone(),
            timestamp: ts,
            vas: Vec::new(),
        };
        // The manifest carries CSSM's ids when the directory has them, else the names (and the
        // export says so).
        let mut names_without_ids: Vec<String> = Vec::new();
        let mut sa_id: Option<String> = None;
        let (mut reports_n, mut devices_n) = (0, 0);
        let mut batch_ids = Vec::new();
        for g in groups.iter().filter(|g| g.smart_account == sa) {
            let id = Uuid::now_v7();
            reports::export_pending(c, &sa, &g.virtual_account, id).await?;
            let reports = reports::of_batch(c, id).await?;
            let mut by_device: BTreeMap<Uuid, Vec<String>> = BTreeMap::new();
            for r in &reports {
                by_device
                    .entry(r.device_id)
                    .or_default()
                    .push(String::from_utf8_lossy(&r.body).into_owned());
            }
            let mut devices = Vec::with_capacity(by_device.len());
            for (device, texts) in by_device {
                let content = rum::envelope(&texts)
                    .map_err(|e| Problem::internal(format!("device {device}: {e}")))?;
                devices.push(DeviceFile {
                    device_id: device.to_string(),
                    content,
                });
            }
            batches::insert(
                c,
                &NewBatch {
                    id,
                    mode: BatchMode::Offline,
                    smart_account: &sa,
                    virtual_account: &g.virtual_account,
                    nonce: &bundle.file_name(),
                    state: BatchState::Exported,
                    reports: reports.len() as i32,
                    devices: devices.len() as i32,
                },
            )
            .await?;
            batch_ids.push(id);
            reports_n += reports.len();
            devices_n += devices.len();
            let va_id = match crate::accounts::ids_for(c, &sa, &g.virtual_account).await? {
                Some(ids) => {
                    sa_id.get_or_insert(ids.smart_account_id);
                    ids.virtual_account_id
                }
                None => {
                    names_without_ids.push(format!("{sa} / {}", g.virtual_account));
                    g.virtual_account.clone()
                }
            };
            bundle.vas.push(VaUsage {
                va_name: g.virtual_account.clone(),
                va_id,
                devices,
            });
        }
        if let Some(id) = sa_id {
            bundle.sa_id = id;
        }
        let bytes = bundle.to_tar_gz().map_err(Problem::internal)?;
        let export_id = Uuid::now_v7();
        let file_name = bundle.file_name();
        exports::insert(
            c,
            &NewExport {
                id: export_id,
                file_name: &file_name,
                smart_account: &sa,
                bundle: &bytes,
                reports: reports_n as i32,
                devices: devices_n as i32,
                names_without_ids: names_without_ids.iter().cloned().map(Some).collect(),
            },
        )
        .await?;
        exports::link_batches(c, export_id, &batch_ids).await?;
        Ok(Export {
            id: export_id,
            file_name,
            bytes,
            reports: reports_n,
            devices: devices_n,
            names_without_ids,
        })
    })
    .await
}

/// What became of one file of an ACK bundle: `imported`, `unknown-device` (no exported report of
/// the device it names waits for an ACK, and none ever did), `already-imported` (the device's
/// exported reports are acknowledged already) or `unreadable` (not a `<smartLicense>` document).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AckFileOutcome {
    /// The file's name in the bundle.
    pub file: String,
    /// `imported`, `unknown-device`, `already-imported` or `unreadable`.
    pub outcome: String,
    /// The device the file went to, or the one it names.
    pub device_id: Option<Uuid>,
    pub detail: Option<String>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AckImportResult {
    pub files: usize,
    pub devices_acked: usize,
    pub batches_completed: usize,
    /// Files that were not imported (each named in `outcomes`).
    pub not_imported: usize,
    /// One entry per file, in bundle order.
    pub outcomes: Vec<AckFileOutcome>,
}

/// Most ACKs in one `AcksReceived` message, as online.
const ACKS_PER_EVENT: usize = 400;

const IMPORTED: &str = "imported";
const UNKNOWN: &str = "unknown-device";
const ALREADY: &str = "already-imported";
const UNREADABLE: &str = "unreadable";

/// `ACK_dev_<id>_<anything>` -> the Tally device id, when `<id>` is one.
fn device_id_in_name(name: &str) -> Option<Uuid> {
    let base = name.rsplit('/').next()?;
    let rest = base.strip_prefix("ACK_dev_")?;
    let id = rest.split(['_', '.']).next()?;
    Uuid::parse_str(id).ok()
}

struct Candidate {
    index: usize,
    doc: String,
    id: Option<Uuid>,
    udis: Vec<Udi>,
}

/// One ACK going to one device of one exported batch.
struct Delivery {
    device: Uuid,
    doc: String,
}

/// Takes CSSM's ACK bundle. Each file goes to the device named in its file name (or, failing
/// that, whose UDI it contains) and to that device's oldest export still waiting for an ACK; the
/// files that match are imported, the others are named in the answer with why. Only an archive
/// that cannot be read at all is refused (400).
pub async fn import_acks(up: &Uplink, bytes: &[u8]) -> Result<AckImportResult, Problem> {
    let files = bundle::ack_bundle_files(bytes)
        .map_err(|e| Problem::bad_request("invalid-bundle", e.to_string()))?;
    if files.is_empty() {
        return Err(Problem::bad_request(
            "invalid-bundle",
            "the bundle holds no file",
        ));
    }
    let mut outcomes: Vec<AckFileOutcome> = Vec::with_capacity(files.len());
    let mut candidates = Vec::new();
    for (name, data) in files {
        let id = device_id_in_name(&name);
        let mut outcome = AckFileOutcome {
            file: name,
            outcome: UNREADABLE.into(),
            device_id: id,
            detail: None,
        };
        match String::from_utf8(data) {
            Err(_) => outcome.detail = Some("not UTF-8 text".into()),
            Ok(doc) => match bundle::check_ack_document(&doc) {
                Err(e) => outcome.detail = Some(e),
                Ok(()) => {
                    let udis = if id.is_none() {
                        bundle::udis_in(&doc)
                    } else {
                        Vec::new()
                    };
                    candidates.push(Candidate {
                        index: outcomes.len(),
                        doc,
                        id,
                        udis,
                    });
                }
            },
        }
        outcomes.push(outcome);
    }
    let ids: Vec<Uuid> = candidates.iter().filter_map(|c| c.id).collect();
    let serials: Vec<String> = candidates
        .iter()
        .flat_map(|c| c.udis.iter().map(|u| u.udi_serial_number.clone()))
        .collect();
    let mut conn = tally_platform::problem::conn(&up.pool).await?;
    let waiting = exports::waiting_of(&mut conn, &ids, &serials).await?;
    let acked_ids: HashSet<Uuid> = exports::acked_offline(&mut conn, &ids)
        .await?
        .into_iter()
        .collect();
    let acked_udis: HashSet<(String, String)> = exports::acked_offline_serials(&mut conn, &serials)
        .await?
        .into_iter()
        .collect();
    // (batch, device) pairs this import already gave an ACK to.
    let mut taken: HashSet<(Uuid, Uuid)> = HashSet::new();
    let mut by_batch: BTreeMap<Uuid, Vec<Delivery>> = BTreeMap::new();
    let mut export_ids: BTreeSet<Uuid> = BTreeSet::new();
    for c in candidates {
        let out = &mut outcomes[c.index];
        let matches = |w: &&exports::Waiting| match c.id {
            Some(id) => w.device_id == id,
            None => c
                .udis
                .iter()
                .any(|u| u.udi_pid == w.udi_pid && u.udi_serial_number == w.udi_serial),
        };
        let target = waiting
            .iter()
            .filter(matches)
            .find(|w| !taken.contains(&(w.batch_id, w.device_id)));
        match target {
            Some(w) => {
                taken.insert((w.batch_id, w.device_id));
                export_ids.extend(w.export_id);
                out.outcome = IMPORTED.into();
                out.device_id = Some(w.device_id);
                by_batch.entry(w.batch_id).or_default().push(Delivery {
                    device: w.device_id,
                    doc: c.doc,
                });
            }
            None => {
                let seen_here = waiting.iter().find(matches).is_some();
                let acked_before = match c.id {
                    Some(id) => acked_ids.contains(&id),
                    None => c.udis.iter().any(|u| {
                        acked_udis.contains(&(u.udi_pid.clone(), u.udi_serial_number.clone()))
                    }),
                };
                if seen_here || acked_before {
                    out.outcome = ALREADY.into();
                    out.detail =
                        Some("the device's exported reports are acknowledged already".into());
                } else {
                    out.outcome = UNKNOWN.into();
                    out.detail = Some(match (c.id, c.udis.is_empty()) {
                        (Some(_), _) => "no exported report of this device waits for an ACK".into(),
                        (None, false) => format!(
                            "the file name carries no Tally device id, and no exported report of {} waits for an ACK",
                            c.udis
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        (None, true) => {
                            "the file name carries no Tally device id and the document no UDI"
                                .into()
                        }
                    });
                }
            }
        }
    }
    let mut devices_acked = 0;
    let mut batches_completed = 0;
    conn.transaction(async |c| {
        for (batch, deliveries) in by_batch {
            devices_acked += deliveries.len();
            if deliver(c, batch, deliveries).await? {
                batches_completed += 1;
            }
        }
        let ids: Vec<Uuid> = export_ids.into_iter().collect();
        exports::drop_answered(c, &ids).await?;
        Ok::<_, diesel::result::Error>(())
    })
    .await?;
    let not_imported = outcomes.iter().filter(|o| o.outcome != IMPORTED).count();
    if not_imported > 0 {
        tracing::warn!(
            not_imported,
            files = outcomes.len(),
            "ACK bundle: some files were not imported"
        );
    }
    Ok(AckImportResult {
        files: outcomes.len(),
        devices_acked,
        batches_completed,
        not_imported,
        outcomes,
    })
}

/// Records the ACKs of some devices of one exported batch, marks their reports acked and
/// publishes them; the batch completes when none of its reports waits any more (returns true).
async fn deliver(
    c: &mut AsyncPgConnection,
    batch: Uuid,
    deliveries: Vec<Delivery>,
) -> Result<bool, diesel::result::Error> {
    let reports: Vec<BatchReport> = reports::of_batch(c, batch).await?;
    let devices: Vec<Uuid> = deliveries.iter().map(|d| d.device).collect();
    exports::ack_reports(c, batch, &devices).await?;
    let mut of_device: HashMap<Uuid, Vec<&BatchReport>> = HashMap::new();
    for r in &reports {
        of_device.entry(r.device_id).or_default().push(r);
    }
    let mut rows = acks::NewAcks::default();
    let mut events = Vec::with_capacity(deliveries.len());
    let mut per_cycle: BTreeMap<String, proto::UploadProgress> = BTreeMap::new();
    for d in deliveries {
        let Some(rs) = of_device.get(&d.device) else {
            continue;
        };
        let Some(first) = rs.first() else { continue };
        let report_ids: Vec<u64> = rs.iter().map(|r| r.report_id as u64).collect();
        let cycle = rs.iter().find_map(|r| r.cycle_id);
        let cycle_s = cycle.map(|c| c.to_string()).unwrap_or_default();
        per_cycle
            .entry(cycle_s.clone())
            .or_insert_with(|| proto::UploadProgress {
                cycle_id: cycle_s.clone(),
                ..Default::default()
            })
            .reports_uploaded += rs.len() as u32;
        rows.device.push(d.device);
        rows.report_ids.push(
            report_ids
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
        rows.ack.push(d.doc.clone());
        events.push(proto::DeviceAck {
            device_id: d.device.to_string(),
            cycle_id: cycle_s,
            udi_pid: first.udi_pid.clone(),
            udi_serial: first.udi_serial.clone(),
            report_ids,
            ack: d.doc,
        });
    }
    if !rows.device.is_empty() {
        acks::insert(c, batch, &rows).await?;
    }
    let done = exports::waiting_in_batch(c, batch).await? == 0;
    if done {
        batches::complete(c, batch).await?;
    }
    for (i, ev) in per_cycle.values_mut().enumerate() {
        // The batch counts once, with the import that completes it.
        ev.batches = u32::from(done && i == 0);
        tally_platform::metrics::inc("reports_uploaded", u64::from(ev.reports_uploaded));
        tally_bus::emit(c, Schema::Uplink, &*ev).await?;
    }
    for chunk in events.chunks(ACKS_PER_EVENT) {
        tally_bus::emit(
            c,
            Schema::Uplink,
            &proto::AcksReceived {
                acks: chunk.to_vec(),
                source: BatchMode::Offline.as_str().to_owned(),
            },
        )
        .await?;
    }
    tracing::info!(batch = %batch, acks = events.len(), complete = done, "offline ACKs imported");
    Ok(done)
}

/// Puts the reports of one export that still wait for an ACK back in line (its ACK bundle is
/// lost); the other exports are left alone. `None` when no such export is kept.
pub async fn requeue_export(up: &Uplink, id: Uuid) -> Result<usize, Problem> {
    let mut conn = tally_platform::problem::conn(&up.pool).await?;
    conn.transaction(async |c| exports::requeue(c, id).await)
        .await?
        .ok_or_else(|| Problem::not_found("export", id))
}
