//! Online path: accept collected reports, form batches, send them, poll for ACKs.

use crate::Uplink;
use crate::accounts::Lookup;
use crate::store::batches::{self, DueBatch, ErrorClass, NewBatch};
use crate::store::reports::{self, BatchReport, NO_ACK, NewReports, ReportKey};
use crate::store::{BatchMode, BatchState, ReportState, acks};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tally_bus::{consumer::HandlerError, proto};
use tally_cssm::{Acknowledgement, DeviceUsage, PollOutcome, UploadOutcome};
use tally_domain::Udi;
use tally_store::outbox::{Schema, once};
use uuid::Uuid;

/// Most ACKs in one `AcksReceived` message (each ACK document is about 1 KiB).
const ACKS_PER_EVENT: usize = 400;

pub async fn accept(
    up: &Uplink,
    msg_id: &str,
    ev: proto::ReportsCollected,
) -> Result<(), HandlerError> {
    let mut conn = up.pool.get().await.map_err(tally_store::StoreError::from)?;
    let cycle = Uuid::parse_str(&ev.cycle_id).ok();
    let mut cols = NewReports::default();
    for r in ev.reports {
        let device = Uuid::parse_str(&r.device_id)
            .map_err(|e| HandlerError::Poison(format!("device id {:?}: {e}", r.device_id)))?;
        cols.pid.push(r.udi_pid);
        cols.serial.push(r.udi_serial);
        cols.report_id.push(r.report_id as i64);
        cols.device.push(device);
        cols.sa.push(r.smart_account);
        cols.va.push(r.virtual_account);
        cols.body.push(r.body);
    }
    // An event with no reports still claims its id: a redelivery of it does nothing either.
    once(&mut conn, Schema::Uplink, msg_id, async |c| {
        if !cols.pid.is_empty() {
            reports::insert(c, &cols, cycle).await?;
        }
        Ok::<_, HandlerError>(())
    })
    .await?;
    Ok(())
}

/// Forms batches from pending reports: per smart/virtual account, full ones at once, the rest
/// once the oldest report has lingered. Returns the number of batches formed.
pub async fn form_batches(up: &Uplink, force: bool) -> Result<usize, tally_store::StoreError> {
    let mut conn = up.pool.get().await?;
    let max = up.cfg.batch_max_reports.max(1) as i64;
    let linger = chrono::Duration::from_std(up.cfg.linger).unwrap_or_default();
    let n = conn
        .transaction(async |c| {
            // One former at a time (senders and replicas alike): two formers skipping each
            // other's locked rows would split a device's reports over two batches.
            batches::lock_forming(c).await?;
            let groups = reports::pending_groups(c).await?;
            let mut formed = 0;
            for g in groups {
                let ripe = force || g.n >= max || g.oldest + linger <= chrono::Utc::now();
                if !ripe {
                    continue;
                }
                let mut picks: Vec<ReportKey> =
                    reports::claim_pending(c, &g.smart_account, &g.virtual_account, max + 1)
                        .await?;
                // A device's reports travel together: when the cap cuts through a device, it
                // waits for the next batch (unless it alone exceeds the cap).
                if let Some(beyond) = picks.get(max as usize).map(|p| p.device_id) {
                    picks.truncate(max as usize);
                    let keep = picks.iter().filter(|p| p.device_id != beyond).count();
                    if keep > 0 {
                        picks.truncate(keep);
                    }
                }
                if picks.is_empty() {
                    continue;
                }
                let id = Uuid::now_v7();
                let mut devices: Vec<Uuid> = picks.iter().map(|p| p.device_id).collect();
                devices.dedup();
                batches::insert(
                    c,
                    &NewBatch {
                        id,
                        mode: BatchMode::Online,
                        smart_account: &g.smart_account,
                        virtual_account: &g.virtual_account,
                        nonce: &Uuid::new_v4().to_string(),
                        state: BatchState::New,
                        reports: picks.len() as i32,
                        devices: devices.len() as i32,
                    },
                )
                .await?;
                reports::mark(c, &picks, ReportState::Batched, Some(id)).await?;
                formed += 1;
            }
            Ok::<_, diesel::result::Error>(formed)
        })
        .await?;
    Ok(n)
}

/// Polls come every `poll_initial` at first (CSSM usually answers within seconds), then back off
/// exponentially to `poll_max` for uploads CSSM takes minutes over.
fn backoff(up: &Uplink, attempts: i32) -> chrono::Duration {
    let base = up.cfg.poll_initial.as_millis() as i64;
    let ms = base
        .saturating_mul(1i64 << (attempts - 4).clamp(0, 16))
        .min(up.cfg.poll_max.as_millis() as i64);
    chrono::Duration::milliseconds(ms.max(100))
}

/// Sends or polls one due batch. Returns false when none was due.
pub async fn step(up: &Uplink) -> Result<bool, tally_store::StoreError> {
    let Some(cssm) = up.cssm.clone() else {
        return Ok(false);
    };
    let mut conn = up.pool.get().await?;
    let worked = conn
        .transaction(async |c| {
            let Some(b) = batches::claim_due(c).await? else {
                return Ok(false);
            };
            let reports = reports::of_batch(c, b.id).await?;
            if b.state == BatchState::New {
                send(up, &cssm, c, &b, &reports).await?;
            } else if let Some(poll_id) = &b.poll_id {
                poll(up, &cssm, c, &b, poll_id, &reports).await?;
            }
            Ok::<_, diesel::result::Error>(true)
        })
        .await?;
    Ok(worked)
}

async fn retry_later(
    up: &Uplink,
    c: &mut AsyncPgConnection,
    b: &DueBatch,
    error: &str,
) -> Result<(), diesel::result::Error> {
    tracing::warn!(batch = %b.id, error, "CSSM call failed; will retry");
    batches::retry_later(c, b.id, error, chrono::Utc::now() + backoff(up, b.attempts)).await?;
    Ok(())
}

async fn send(
    up: &Uplink,
    cssm: &tally_cssm::CssmClient,
    c: &mut AsyncPgConnection,
    b: &DueBatch,
    reports: &[BatchReport],
) -> Result<(), diesel::result::Error> {
    let udis: Vec<(Uuid, Udi)> = {
        let mut v: Vec<(Uuid, Udi)> = reports
            .iter()
            .map(|r| {
                (
                    r.device_id,
                    Udi {
                        udi_pid: r.udi_pid.clone(),
                        udi_serial_number: r.udi_serial.clone(),
                    },
                )
            })
            .collect();
        v.dedup();
        v
    };
    let usage: Vec<DeviceUsage<'_>> = udis
        .iter()
        .map(|(d, udi)| DeviceUsage {
            udi,
            reports: reports
                .iter()
                .filter(|r| r.device_id == *d)
                .map(|r| r.body.as_slice())
                .collect(),
        })
        .collect();
    let ids = match crate::accounts::ids_for_send(up, c, &b.smart_account, &b.virtual_account).await
    {
        Ok(ids) => ids,
        Err(Lookup::Unknown(why)) => {
            return failed_for_good(c, b, reports, &why, ErrorClass::UnknownAccount).await;
        }
        Err(Lookup::Transient(why)) => return retry_later(up, c, b, &why).await,
        Err(Lookup::Db(e)) => return Err(e),
    };
    match cssm
        .report_usage(
            &ids.smart_account_id,
            &ids.virtual_account_id,
            &b.nonce,
            &usage,
        )
        .await
    {
        Ok(UploadOutcome::Accepted {
            poll_id,
            poll_id_numeric,
        }) => {
            let next = chrono::Utc::now() + backoff(up, 0);
            batches::accepted(c, b.id, &poll_id, poll_id_numeric, next).await?;
            tracing::info!(batch = %b.id, reports = reports.len(), devices = udis.len(), "batch accepted by CSSM");
            Ok(())
        }
        Ok(f @ UploadOutcome::Failed { .. }) if f.is_duplicate() => {
            let UploadOutcome::Failed {
                message,
                duplicates,
                ..
            } = f
            else {
                return Ok(());
            };
            refused(c, b, reports, &message, &duplicates).await
        }
        Ok(UploadOutcome::Failed {
            message,
            message_code,
            ..
        }) => {
            let reason = if message_code.is_empty() {
                message
            } else {
                format!("{message} ({message_code})")
            };
            failed_for_good(c, b, reports, &reason, ErrorClass::Permanent).await
        }
        Err(e) if e.is_transient() => retry_later(up, c, b, &e.to_string()).await,
        Err(e) => failed_for_good(c, b, reports, &e.to_string(), ErrorClass::Permanent).await,
    }
}

/// CSSM refused the batch for a reason trying again will not change (a 4xx, a FAILED that is
/// not a duplicate, an answer that cannot be read; `Permanent`), or CSSM does not know its
/// accounts (`UnknownAccount`): the batch fails with the reason, its reports fail with it and
/// wait (for an operator's retry; an unknown account also for the directory to learn it), and
/// the scheduler is told (an alert).
async fn failed_for_good(
    c: &mut AsyncPgConnection,
    b: &DueBatch,
    reports: &[BatchReport],
    reason: &str,
    class: ErrorClass,
) -> Result<(), diesel::result::Error> {
    tracing::error!(batch = %b.id, reason, class = class.as_str(), "batch failed; it waits");
    let keys: Vec<ReportKey> = reports.iter().map(|r| r.key()).collect();
    let (why, kind) = if class == ErrorClass::UnknownAccount {
        (format!("not uploaded: {reason}"), PROBLEM_ACCOUNT_UNKNOWN)
    } else {
        (
            format!("CSSM refused the upload: {reason}"),
            PROBLEM_BATCH_FAILED,
        )
    };
    reports::fail(c, &keys, &why).await?;
    batches::fail_as(c, b.id, reason, class).await?;
    let mut progress = Progress::new(0);
    for r in reports {
        progress.failed(r, Some(&why));
    }
    tally_platform::metrics::inc("reports_upload_failed", reports.len() as u64);
    progress.emit(c).await?;
    let devices = progress.failed_devices();
    let problem = proto::UplinkProblem {
        batch_id: b.id.to_string(),
        kind: kind.into(),
        smart_account: b.smart_account.clone(),
        virtual_account: b.virtual_account.clone(),
        reason: reason.to_owned(),
        reports: u32::try_from(reports.len()).unwrap_or(u32::MAX),
        device_ids: devices.iter().map(Uuid::to_string).collect(),
        at_ms: chrono::Utc::now().timestamp_millis(),
        unmatched: 0,
    };
    tally_bus::emit(c, Schema::Uplink, &problem).await?;
    Ok(())
}

/// The `UploadProgress` each cycle among a batch's reports is told.
struct Progress {
    per_cycle: BTreeMap<String, proto::UploadProgress>,
    /// Devices named as failed, in the order they were.
    named: Vec<Uuid>,
    seen: std::collections::HashSet<Uuid>,
    batches: u32,
}

impl Progress {
    /// `batches`: how many batches each cycle's event counts (1 when the batch completed).
    fn new(batches: u32) -> Self {
        Self {
            per_cycle: BTreeMap::new(),
            named: Vec::new(),
            seen: Default::default(),
            batches,
        }
    }

    fn of(&mut self, r: &BatchReport) -> &mut proto::UploadProgress {
        let cycle = r.cycle_id.map(|c| c.to_string()).unwrap_or_default();
        let batches = self.batches;
        self.per_cycle
            .entry(cycle.clone())
            .or_insert_with(|| proto::UploadProgress {
                cycle_id: cycle,
                batches,
                ..Default::default()
            })
    }

    fn uploaded(&mut self, r: &BatchReport) {
        self.of(r).reports_uploaded += 1;
    }

    /// A report that failed; with a `reason`, its device is named as failed (once).
    fn failed(&mut self, r: &BatchReport, reason: Option<&str>) {
        let name = reason.filter(|_| self.seen.insert(r.device_id));
        if name.is_some() {
            self.named.push(r.device_id);
        }
        let e = self.of(r);
        e.reports_failed += 1;
        if let Some(reason) = name {
            e.devices_failed += 1;
            e.failures.push(proto::DeviceFailure {
                device_id: r.device_id.to_string(),
                reason: reason.to_owned(),
            });
        }
    }

    fn failed_devices(&self) -> Vec<Uuid> {
        self.named.clone()
    }

    async fn emit(&self, c: &mut AsyncPgConnection) -> Result<(), diesel::result::Error> {
        for ev in self.per_cycle.values() {
            tally_bus::emit(c, Schema::Uplink, ev).await?;
        }
        Ok(())
    }
}

/// `UplinkProblem.kind` of a batch CSSM refused for good.
pub const PROBLEM_BATCH_FAILED: &str = "batch_failed";
/// `UplinkProblem.kind` of a batch whose smart or virtual account CSSM does not know.
pub const PROBLEM_ACCOUNT_UNKNOWN: &str = "account_unknown";
/// `UplinkProblem.kind` of ACK entries that matched no device of their batch.
pub const PROBLEM_ACK_UNMATCHED: &str = "ack_unmatched";

/// CSSM refused a batch. Duplicates are dropped (CSSM has them already); when it named them, the
/// rest go back to pending and travel in the next batch; otherwise the whole batch fails.
async fn refused(
    c: &mut AsyncPgConnection,
    b: &DueBatch,
    reports: &[BatchReport],
    message: &str,
    duplicates: &[(Udi, u64)],
) -> Result<(), diesel::result::Error> {
    tracing::warn!(batch = %b.id, message, duplicates = duplicates.len(), "CSSM refused a batch");
    let is_dup = |r: &BatchReport| {
        duplicates.iter().any(|(u, id)| {
            u.udi_pid == r.udi_pid
                && u.udi_serial_number == r.udi_serial
                && *id as i64 == r.report_id
        })
    };
    let (dups, rest): (Vec<&BatchReport>, Vec<&BatchReport>) =
        reports.iter().partition(|r| is_dup(r));
    let requeue = !dups.is_empty();
    let keys = |v: &[&BatchReport]| -> Vec<ReportKey> { v.iter().map(|r| r.key()).collect() };
    let failed: Vec<&BatchReport> = if requeue {
        dups.clone()
    } else {
        reports.iter().collect()
    };
    let why = if requeue {
        "CSSM already has this report (duplicate)"
    } else {
        message
    };
    reports::fail(c, &keys(&failed), why).await?;
    if requeue {
        reports::mark(c, &keys(&rest), ReportState::Pending, None).await?;
    }
    batches::fail_as(c, b.id, message, ErrorClass::Duplicate).await?;
    // Devices left with nothing in flight will get no ACK from this cycle: say so.
    let requeued: std::collections::HashSet<Uuid> = if requeue {
        rest.iter().map(|r| r.device_id).collect()
    } else {
        Default::default()
    };
    let mut progress = Progress::new(0);
    let why = format!("CSSM refused the upload: {message}");
    for r in &failed {
        // A device with reports back in line is not a failure of this cycle.
        let named = !requeued.contains(&r.device_id);
        progress.failed(r, named.then_some(why.as_str()));
    }
    tally_platform::metrics::inc("reports_upload_failed", failed.len() as u64);
    progress.emit(c).await?;
    Ok(())
}

async fn poll(
    up: &Uplink,
    cssm: &tally_cssm::CssmClient,
    c: &mut AsyncPgConnection,
    b: &DueBatch,
    poll_id: &str,
    reports: &[BatchReport],
) -> Result<(), diesel::result::Error> {
    // The ids the upload went with (the directory has them: the upload resolved them).
    let ids = crate::accounts::ids_for(c, &b.smart_account, &b.virtual_account).await?;
    let accounts = ids
        .as_ref()
        .map(|i| (i.smart_account_id.as_str(), i.virtual_account_id.as_str()));
    match cssm.poll(poll_id, b.poll_id_numeric, accounts).await {
        Ok(PollOutcome::Pending) => {
            batches::poll_later(c, b.id, chrono::Utc::now() + backoff(up, b.attempts + 1)).await?;
            Ok(())
        }
        Ok(PollOutcome::Complete(acks)) => {
            let entries = acks.into_iter().map(AckEntry::from).collect();
            complete_entries(c, b.id, reports, entries, BatchMode::Online).await
        }
        Err(e) if e.is_transient() => retry_later(up, c, b, &e.to_string()).await,
        Err(e) => failed_for_good(c, b, reports, &e.to_string(), ErrorClass::Permanent).await,
    }
}

/// One ACK entry as CSSM returned it: the device it names (if it does), the report ids (if it
/// names them), and the ACK document or why it could not be read.
pub(crate) struct AckEntry {
    pub sudi: Option<Udi>,
    pub report_ids: Vec<u64>,
    pub doc: Result<String, (String, String)>,
}

impl From<Acknowledgement> for AckEntry {
    fn from(a: Acknowledgement) -> Self {
        use base64::Engine;
        let doc = match a.smart_license {
            None => Err((String::new(), "the entry carries no smart_license".into())),
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or((
                    b64,
                    "smart_license is not base64 of a UTF-8 document".into(),
                )),
        };
        Self {
            sudi: a.sudi,
            report_ids: a.report_ids,
            doc,
        }
    }
}

/// Whether `needle` occurs in `hay` as a whole token (not inside a longer PID or serial).
fn contains_token(hay: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return false;
    }
    let part = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    hay.match_indices(needle).any(|(i, _)| {
        let before = hay[..i].chars().next_back();
        let after = hay[i + needle.len()..].chars().next();
        !before.is_some_and(part) && !after.is_some_and(part)
    })
}

/// The one device of the batch whose PID and serial number both appear in the ACK document.
/// The document is not parsed: CSSM's ACK format is its own.
fn udi_in_doc<'a>(doc: &str, devices: &'a [(Uuid, Udi)]) -> Option<&'a (Uuid, Udi)> {
    let mut found = devices.iter().filter(|(_, u)| {
        contains_token(doc, &u.udi_serial_number) && contains_token(doc, &u.udi_pid)
    });
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// Records CSSM's ACKs for an online batch and publishes them, one per device; devices of the
/// batch that got no ACK are reported as failed. An entry goes to the device its `sudi` names;
/// without one, to the one device whose UDI the document shows; failing that, in a one-device
/// batch, to that device. Entries that match nothing are recorded in `uplink.unmatched_acks` and
/// reported (an `UplinkProblem`), never dropped.
pub(crate) async fn complete_entries(
    c: &mut AsyncPgConnection,
    batch: Uuid,
    reports: &[BatchReport],
    entries: Vec<AckEntry>,
    source: BatchMode,
) -> Result<(), diesel::result::Error> {
    let mut devices: Vec<(Uuid, Udi)> = Vec::new();
    for r in reports {
        if !devices.iter().any(|(d, _)| *d == r.device_id) {
            devices.push((
                r.device_id,
                Udi {
                    udi_pid: r.udi_pid.clone(),
                    udi_serial_number: r.udi_serial.clone(),
                },
            ));
        }
    }
    let mut matched: Vec<(Udi, Vec<u64>, String)> = Vec::new();
    let mut unmatched: Vec<acks::NewUnmatched> = Vec::new();
    let mut taken: std::collections::HashSet<Uuid> = std::collections::HashSet::new();
    let mut leave = |e: &AckEntry, ack: String, reason: String| {
        unmatched.push(acks::NewUnmatched {
            id: Uuid::now_v7(),
            batch_id: batch,
            udi_pid: e.sudi.as_ref().map(|u| u.udi_pid.clone()),
            udi_serial: e.sudi.as_ref().map(|u| u.udi_serial_number.clone()),
            report_ids: e.report_ids.iter().map(|r| Some(*r as i64)).collect(),
            ack,
            reason,
        })
    };
    for e in &entries {
        let doc = match &e.doc {
            Ok(d) => d,
            Err((raw, why)) => {
                leave(e, raw.clone(), why.clone());
                continue;
            }
        };
        let device = match &e.sudi {
            Some(u) => devices.iter().find(|(_, d)| {
                d.udi_pid == u.udi_pid && d.udi_serial_number == u.udi_serial_number
            }),
            None => udi_in_doc(doc, &devices).or(match devices.as_slice() {
                [only] => Some(only),
                _ => None,
            }),
        };
        let Some((device, udi)) = device else {
            let why = match &e.sudi {
                Some(u) => format!("the ACK names {u}, which is not a device of this batch"),
                None => "the ACK names no device: no sudi, and no UDI of the batch's devices \
                         in the document"
                    .to_owned(),
            };
            leave(e, doc.clone(), why);
            continue;
        };
        if !taken.insert(*device) {
            leave(e, doc.clone(), format!("a second ACK for {udi}"));
            continue;
        }
        // Without report ids, the ACK is taken to acknowledge what was sent for the device.
        let ids = if e.report_ids.is_empty() {
            reports
                .iter()
                .filter(|r| r.device_id == *device)
                .map(|r| r.report_id as u64)
                .collect()
        } else {
            e.report_ids.clone()
        };
        matched.push((udi.clone(), ids, doc.clone()));
    }
    if !unmatched.is_empty() {
        tracing::warn!(batch = %batch, unmatched = unmatched.len(), "ACK entries match no device of the batch; recorded");
        acks::insert_unmatched(c, &unmatched).await?;
        let (sa, va) = batches::accounts(c, batch).await?.unwrap_or_default();
        let mut reason = format!(
            "{} ACK entr{} from CSSM matched no device of the batch: {}",
            unmatched.len(),
            if unmatched.len() == 1 { "y" } else { "ies" },
            unmatched[0].reason
        );
        if unmatched.len() > 1 {
            reason.push_str(" (and others; see uplink.unmatched_acks)");
        }
        tally_bus::emit(
            c,
            Schema::Uplink,
            &proto::UplinkProblem {
                batch_id: batch.to_string(),
                kind: PROBLEM_ACK_UNMATCHED.into(),
                smart_account: sa,
                virtual_account: va,
                reason,
                reports: u32::try_from(reports.len()).unwrap_or(u32::MAX),
                device_ids: Vec::new(),
                at_ms: chrono::Utc::now().timestamp_millis(),
                unmatched: u32::try_from(unmatched.len()).unwrap_or(u32::MAX),
            },
        )
        .await?;
    }
    let acks = matched;
    let mut by_udi: HashMap<(String, String), (Uuid, Option<Uuid>)> = HashMap::new();
    for r in reports {
        let e = by_udi
            .entry((r.udi_pid.clone(), r.udi_serial.clone()))
            .or_insert((r.device_id, r.cycle_id));
        if e.1.is_none() {
            e.1 = r.cycle_id;
        }
    }
    let mut events: Vec<proto::DeviceAck> = Vec::new();
    let mut acked = std::collections::HashSet::new();
    for (udi, report_ids, doc) in acks {
        // Every entry left here names a device of the batch.
        let Some((device, cycle)) =
            by_udi.get(&(udi.udi_pid.clone(), udi.udi_serial_number.clone()))
        else {
            continue;
        };
        if !acked.insert(*device) {
            continue;
        }
        events.push(proto::DeviceAck {
            device_id: device.to_string(),
            cycle_id: cycle.map(|c| c.to_string()).unwrap_or_default(),
            udi_pid: udi.udi_pid,
            udi_serial: udi.udi_serial_number,
            report_ids,
            ack: doc,
        });
    }
    if !events.is_empty() {
        let rows = acks::NewAcks {
            device: events
                .iter()
                .filter_map(|e| Uuid::parse_str(&e.device_id).ok())
                .collect(),
            report_ids: events
                .iter()
                .map(|e| {
                    e.report_ids
                        .iter()
                        .map(|r| (*r as i64).to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .collect(),
            ack: events.iter().map(|e| e.ack.clone()).collect(),
        };
        acks::insert(c, batch, &rows).await?;
    }
    reports::settle(c, batch, &acked.iter().copied().collect::<Vec<_>>()).await?;
    batches::complete(c, batch).await?;
    let mut progress = Progress::new(1);
    for r in reports {
        if acked.contains(&r.device_id) {
            progress.uploaded(r);
        } else {
            progress.failed(r, Some(NO_ACK));
        }
    }
    let uploaded = reports
        .iter()
        .filter(|r| acked.contains(&r.device_id))
        .count();
    tally_platform::metrics::inc("reports_uploaded", uploaded as u64);
    progress.emit(c).await?;
    for chunk in events.chunks(ACKS_PER_EVENT) {
        tally_bus::emit(
            c,
            Schema::Uplink,
            &proto::AcksReceived {
                acks: chunk.to_vec(),
                source: source.as_str().to_owned(),
            },
        )
        .await?;
    }
    tracing::info!(batch = %batch, acks = acked.len(), source = source.as_str(), "ACKs received");
    Ok(())
}

/// What an operator's retry of a batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retry {
    /// The batch's failed reports are pending again (they go in the next batch formed).
    Requeued {
        reports: usize,
    },
    NotFound,
    /// The batch is not one CSSM refused for good, or was retried already: why.
    NotRetryable(String),
}

/// Puts the reports of a batch CSSM refused for good back in line (once).
pub async fn retry(up: &Uplink, id: Uuid) -> Result<Retry, tally_store::StoreError> {
    let mut conn = up.pool.get().await?;
    let r = conn
        .transaction(async |c| {
            let Some(b) = batches::lock_for_retry(c, id).await? else {
                return Ok(Retry::NotFound);
            };
            let retryable = matches!(
                b.error_class,
                Some(ErrorClass::Permanent | ErrorClass::UnknownAccount)
            );
            if b.state != BatchState::Failed || !retryable {
                let why = match b.error_class {
                    Some(ErrorClass::Duplicate) => {
                        format!("batch {id} failed as a duplicate: CSSM has its reports already")
                    }
                    _ => format!(
                        "batch {id} is {} and was not refused for good by CSSM",
                        b.state.as_str()
                    ),
                };
                return Ok(Retry::NotRetryable(why));
            }
            if let Some(at) = b.retried_at {
                return Ok(Retry::NotRetryable(format!(
                    "batch {id} was retried already at {at}"
                )));
            }
            let n = reports::requeue_failed(c, id).await?;
            batches::mark_retried(c, id).await?;
            tracing::info!(batch = %id, reports = n, error = b.error.as_deref().unwrap_or(""), "operator retried a failed batch");
            Ok::<_, diesel::result::Error>(Retry::Requeued { reports: n })
        })
        .await?;
    Ok(r)
}

/// Forms batches and works due ones until the task is dropped.
pub async fn run(up: Uplink) {
    loop {
        let formed = form_batches(&up, false).await;
        if let Err(e) = &formed {
            tracing::warn!(error = %e, "forming batches failed");
        }
        let mut worked = 0;
        loop {
            match step(&up).await {
                Ok(true) => worked += 1,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "uplink step failed");
                    break;
                }
            }
            if worked >= 16 {
                break;
            }
        }
        if worked == 0 && !matches!(formed, Ok(n) if n > 0) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
