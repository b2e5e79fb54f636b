//! Offline path for air-gapped sites: export pending reports as a `UD_SA_*.tar.gz` bundle, and
//! take CSSM's ACK bundle back. File names carry Tally's device id, which routes each ACK home.

use crate::Uplink;
use crate::batch::complete;
use crate::store::batches::{self, NewBatch};
use crate::store::reports::{self, BatchReport};
use crate::store::{BatchMode, BatchState};
use diesel_async::AsyncConnection;
use std::collections::BTreeMap;
use tally_domain::bundle::{AckBundle, DeviceFile, UsageBundle, VaUsage};
use tally_domain::{ack, rum};
use tally_platform::{FieldError, Problem};
use uuid::Uuid;

pub struct Export {
    pub file_name: String,
    pub bytes: Vec<u8>,
    pub reports: usize,
    pub devices: usize,
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
        let (mut reports_n, mut devices_n) = (0, 0);
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
            reports_n += reports.len();
            devices_n += devices.len();
            bundle.vas.push(VaUsage {
                va_name: g.virtual_account.clone(),
                va_id: g.virtual_account.clone(),
                devices,
            });
        }
        let bytes = bundle.to_tar_gz().map_err(Problem::internal)?;
        Ok(Export {
            file_name: bundle.file_name(),
            bytes,
            reports: reports_n,
            devices: devices_n,
        })
    })
    .await
}

#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AckImportResult {
    pub files: usize,
    pub devices_acked: usize,
    pub batches_completed: usize,
}

/// Takes CSSM's ACK bundle: every file must name a device with exported reports and hold a
/// readable ACK for that device, or nothing is recorded.
pub async fn import_acks(up: &Uplink, bytes: &[u8]) -> Result<AckImportResult, Problem> {
    let files = AckBundle::from_tar_gz(bytes)
        .map_err(|e| Problem::bad_request("invalid-bundle", e.to_string()))?;
    let mut errors = Vec::new();
    let mut parsed = Vec::new();
    for f in &files {
        let name = format!("ACK_dev_{}", f.device_id);
        match (
            Uuid::parse_str(&f.device_id),
            ack::parse_ack_document(&f.content),
        ) {
            (Ok(id), Ok(a)) => parsed.push((id, a, f.content.clone())),
            (Err(_), _) => errors.push(FieldError {
                field: name,
                message: "file name does not carry a Tally device id".into(),
            }),
            (_, Err(e)) => errors.push(FieldError {
                field: name,
                message: e.to_string(),
            }),
        }
    }
    let mut conn = tally_platform::problem::conn(&up.pool).await?;
    let ids: Vec<Uuid> = parsed.iter().map(|(id, _, _)| *id).collect();
    let owners = reports::exported_of(&mut conn, &ids).await?;
    let mut by_batch: BTreeMap<Uuid, Vec<(tally_domain::Udi, Vec<u64>, String)>> = BTreeMap::new();
    for (id, a, doc) in parsed {
        // The export the ACK answers is the one holding the reports it names (a device can sit
        // in two exported bundles at once).
        let owner = owners
            .iter()
            .find(|o| o.device_id == id && a.body.report_ids.contains(&(o.report_id as u64)))
            .or_else(|| owners.iter().find(|o| o.device_id == id));
        match owner {
            Some(o) => by_batch
                .entry(o.batch_id)
                .or_default()
                .push((a.body.sudi, a.body.report_ids, doc)),
            None => errors.push(FieldError {
                field: format!("ACK_dev_{id}"),
                message: "no exported reports of this device are waiting for an ACK (unknown device, or already imported)".into(),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let mut devices_acked = 0;
    let batches = by_batch.len();
    conn.transaction(async |c| {
        for (batch, acks) in by_batch {
            let reports: Vec<BatchReport> = reports::of_batch(c, batch).await?;
            devices_acked += acks.len();
            complete(c, batch, &reports, acks, BatchMode::Offline).await?;
        }
        Ok::<_, diesel::result::Error>(())
    })
    .await?;
    Ok(AckImportResult {
        files: files.len(),
        devices_acked,
        batches_completed: batches,
    })
}
