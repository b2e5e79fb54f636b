//! Recording an alert once and delivering it (NATS event, webhook deliveries) in the caller's
//! transaction; the failure alerts of a cycle.

use super::Kind;
use crate::Scheduler;
use crate::deadlines::{impact_str, role_of};
use crate::store::{alerts, cycles::Stage, devices};
use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use std::collections::{HashMap, HashSet};
use tally_bus::proto;
use tally_domain::alert::{AlertKey, AlertKind, Threshold};
use tally_store::outbox::Schema;
use uuid::Uuid;

pub(crate) fn threshold_str(t: Threshold) -> String {
    match t {
        Threshold::DaysBefore(n) => format!("days_before:{n}"),
        Threshold::Passed => "passed".into(),
    }
}

pub(crate) fn parse_threshold(s: &str) -> Option<Threshold> {
    if s == "passed" {
        return Some(Threshold::Passed);
    }
    s.strip_prefix("days_before:")
        .and_then(|n| n.parse().ok())
        .map(Threshold::DaysBefore)
}

/// The keys of the alerts of `kind` already fired about these subjects, by subject: what
/// `due_alerts` must not fire again.
pub async fn already_fired(
    c: &mut AsyncPgConnection,
    kind: AlertKind,
    subjects: &[String],
) -> Result<HashMap<String, HashSet<AlertKey>>, diesel::result::Error> {
    let text = match kind {
        AlertKind::AckDeadline => Kind::AckDeadline,
        AlertKind::TermEnd => Kind::TermEnd,
    };
    let mut out: HashMap<String, HashSet<AlertKey>> = HashMap::new();
    for r in alerts::sent(c, text.as_str(), subjects).await? {
        if let Some(threshold) = parse_threshold(&r.threshold) {
            out.entry(r.subject.clone()).or_default().insert(AlertKey {
                subject: r.subject,
                kind,
                due: r.due,
                threshold,
            });
        }
    }
    Ok(out)
}

/// What an alert is about: a device, or a pool or subscription (no device).
pub struct Subject {
    pub id: String,
    pub device_id: Option<Uuid>,
    pub hostname: String,
    pub site: String,
    pub virtual_account: String,
}

impl Subject {
    pub fn device(d: &devices::FleetRow) -> Self {
        Self {
            id: d.id.to_string(),
            device_id: Some(d.id),
            hostname: d.hostname.clone(),
            site: d.site.clone(),
            virtual_account: d.virtual_account.clone(),
        }
    }
}

/// An alert about one subject.
pub struct NewAlert<'a> {
    pub kind: Kind,
    pub severity: &'a str,
    pub subject: Subject,
    /// The deadline it is about, or when the failure happened.
    pub due: DateTime<Utc>,
    /// What makes it unique for that subject, kind and due time.
    pub threshold: String,
    pub message: String,
}

pub enum Raised {
    Delivered,
    Silenced,
    /// Fired before (same device, kind, due time and threshold): nothing done.
    Already,
}

/// Records an alert once, with its NATS event and webhook deliveries unless silenced, in the
/// caller's transaction.
pub async fn raise(
    c: &mut AsyncPgConnection,
    s: &Scheduler,
    a: &NewAlert<'_>,
    silenced: bool,
    now: DateTime<Utc>,
) -> Result<Raised, diesel::result::Error> {
    let d = &a.subject;
    let id = Uuid::now_v7();
    let row = alerts::NewAlertRow {
        id,
        subject: &d.id,
        kind: a.kind.as_str(),
        due: a.due,
        threshold: &a.threshold,
        severity: a.severity,
        device_id: d.device_id,
        hostname: &d.hostname,
        site: &d.site,
        virtual_account: &d.virtual_account,
        message: &a.message,
        silenced,
        fired_at: now,
    };
    if !alerts::insert_once(c, &row).await? {
        return Ok(Raised::Already);
    }
    if silenced {
        return Ok(Raised::Silenced);
    }
    let raised = proto::AlertRaised {
        alert_id: id.to_string(),
        kind: a.kind.as_str().to_owned(),
        severity: a.severity.to_owned(),
        subject: d.id.clone(),
        device_id: d.device_id.map(|u| u.to_string()).unwrap_or_default(),
        hostname: d.hostname.clone(),
        site: d.site.clone(),
        virtual_account: d.virtual_account.clone(),
        due_ms: a.due.timestamp_millis(),
        threshold: a.threshold.clone(),
        message: a.message.clone(),
    };
    tally_bus::emit(c, Schema::Sched, &raised).await?;
    if let Some(w) = &s.webhooks {
        let payload = serde_json::json!({
            "alert_id": id, "kind": a.kind, "severity": a.severity,
            "subject": d.id, "device_id": d.device_id, "hostname": d.hostname, "site": d.site,
            "virtual_account": d.virtual_account, "due": a.due,
            "threshold": a.threshold, "message": a.message,
        });
        w.enqueue(c, id, a.kind.as_str(), &payload)
            .await
            .map_err(|e| diesel::result::Error::QueryBuilderError(e.to_string().into()))?;
    }
    Ok(Raised::Delivered)
}

/// Alerts for devices a cycle could not collect from, upload or hand an ACK to: one per device,
/// stage and cycle. CUBE/SRST/CME failures are critical: their deadline does not wait.
pub async fn raise_failures(
    c: &mut AsyncPgConnection,
    s: &Scheduler,
    cycle: Uuid,
    failures: &[(String, Stage, String)],
) -> Result<(), diesel::result::Error> {
    if failures.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = failures
        .iter()
        .filter_map(|(d, _, _)| Uuid::parse_str(d).ok())
        .collect();
    let rows = devices::by_ids(c, &ids).await?;
    let by_id: HashMap<Uuid, &devices::FleetRow> = rows.iter().map(|r| (r.id, r)).collect();
    let now = Utc::now();
    // The cycle's start (a fixed time for a cycle this process never saw), so a failure
    // reported twice in one cycle is one alert.
    let started = crate::store::cycles::started_at(c, cycle)
        .await?
        .unwrap_or(DateTime::UNIX_EPOCH);
    let active = alerts::active_silences(c, now).await?;
    for (device, stage, reason) in failures {
        let Some(d) = Uuid::parse_str(device)
            .ok()
            .and_then(|id| by_id.get(&id).copied())
        else {
            continue;
        };
        let kind = match stage {
            Stage::Collection => Kind::CollectionFailed,
            Stage::Upload => Kind::UploadFailed,
            Stage::Ack => Kind::AckFailed,
        };
        let severity = impact_str(role_of(&d.model, d.is_cube, &d.voice_role).impact());
        let silenced = active
            .iter()
            .any(|m| m.matches(kind.as_str(), &d.site, Some(d.id)));
        let alert = NewAlert {
            kind,
            severity,
            subject: Subject::device(d),
            due: started,
            threshold: format!("cycle:{cycle}"),
            message: format!("{}: {stage} failed in cycle {cycle}: {reason}", d.hostname),
        };
        raise(c, s, &alert, silenced, now).await?;
    }
    Ok(())
}
