//! Compliance: each device's reporting deadline from its policy and its last upload and ACK
//! (the domain's deadline engine), its risk (CUBE/SRST/CME stop working; others raise alarms),
//! roll-ups, and alerts at the thresholds, delivered once on NATS and to webhooks.

use crate::Scheduler;
use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Bool, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use tally_bus::proto;
use tally_domain::{
    alert::{AlertKey, AlertKind, AlertState, Threshold, due_alerts},
    policy::{DeadlineStatus, Deadlines, LicenseKind, Policy, Usage},
    risk::{DeviceRisk, DeviceRole, Impact},
};
use tally_store::outbox::Schema;
use utoipa::ToSchema;
use uuid::Uuid;

/// Only one replica evaluates alerts at a time (the unique key dedupes anyway).
const ALERT_LOCK: i64 = 0x7363_6865_645f_616c; // "sched_al"

#[derive(QueryableByName, Debug, Clone)]
pub struct FleetRow {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub hostname: String,
    #[diesel(sql_type = Text)]
    pub model: String,
    #[diesel(sql_type = Text)]
    pub site: String,
    #[diesel(sql_type = Text)]
    pub smart_account: String,
    #[diesel(sql_type = Text)]
    pub virtual_account: String,
    #[diesel(sql_type = Bool)]
    pub is_cube: bool,
    #[diesel(sql_type = Text)]
    pub network_license: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub dna_tier: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    pub first_seen_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub last_upload_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub last_ack_at: Option<DateTime<Utc>>,
}

pub async fn fleet(c: &mut AsyncPgConnection) -> Result<Vec<FleetRow>, diesel::result::Error> {
    diesel::sql_query(
        "SELECT id, hostname, model, site, smart_account, virtual_account, is_cube, network_license, \
         dna_tier, first_seen_at, last_upload_at, last_ack_at FROM sched.devices WHERE NOT deleted \
         ORDER BY hostname, id",
    )
    .load(c)
    .await
}

/// What a device is, as far as a missed deadline goes. Inventory flags CUBE; SRST and CME are
/// features of the same routers and are flagged the same way until inventory tells them apart.
pub fn role_of(model: &str, is_cube: bool) -> DeviceRole {
    if is_cube {
        DeviceRole::Cube
    } else if model.starts_with("C9800") || model.starts_with("AIR-") {
        DeviceRole::Wlc
    } else if model.starts_with("ISR") || model.starts_with("C8") || model.starts_with("ASR") {
        DeviceRole::Router
    } else {
        DeviceRole::Switch
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct DeviceCompliance {
    pub device_id: Uuid,
    pub hostname: String,
    pub model: String,
    pub site: String,
    pub smart_account: String,
    pub virtual_account: String,
    pub role: String,
    /// critical (stops working when the deadline passes) or warning (alarms).
    pub impact: String,
    /// in_compliance, ack_pending (a report is out, or the deadline is within 30 days), or
    /// ack_overdue.
    pub status: String,
    pub deadline: Option<DateTime<Utc>>,
    pub days_left: Option<i64>,
    pub last_upload_at: Option<DateTime<Utc>>,
    pub last_ack_at: Option<DateTime<Utc>>,
    pub reason: String,
}

/// The deadlines of each license the device uses: the network license is perpetual, the DNA
/// add-on a subscription (Cisco's default policy).
fn entitlements(d: &FleetRow) -> Vec<(String, Deadlines)> {
    let policy = Policy::cisco_default();
    let usage = |kind| Usage {
        kind,
        first_use: d.first_seen_at,
        last_report: d.last_upload_at,
        last_ack: d.last_ack_at,
        changes: vec![],
    };
    let mut out = vec![(
        d.network_license.clone(),
        policy.deadlines(&usage(LicenseKind::Perpetual)),
    )];
    if let Some(t) = &d.dna_tier {
        out.push((
            t.clone(),
            policy.deadlines(&usage(LicenseKind::Subscription)),
        ));
    }
    out
}

pub fn assess(d: &FleetRow, now: DateTime<Utc>) -> (DeviceCompliance, DeviceRisk) {
    let role = role_of(&d.model, d.is_cube);
    let ents = entitlements(d);
    let refs: Vec<(&str, Deadlines)> = ents.iter().map(|(n, dl)| (n.as_str(), *dl)).collect();
    let risk = DeviceRisk::assess(d.id.to_string(), role, &refs, now);
    let pending = ents.iter().any(|(_, dl)| dl.ack_pending);
    let status = match risk.status {
        DeadlineStatus::Overdue => "ack_overdue",
        DeadlineStatus::DueSoon => "ack_pending",
        _ if pending => "ack_pending",
        _ => "in_compliance",
    };
    let c = DeviceCompliance {
        device_id: d.id,
        hostname: d.hostname.clone(),
        model: d.model.clone(),
        site: d.site.clone(),
        smart_account: d.smart_account.clone(),
        virtual_account: d.virtual_account.clone(),
        role: role.as_str().to_owned(),
        impact: impact_str(risk.impact).to_owned(),
        status: status.to_owned(),
        deadline: risk.deadline,
        days_left: risk.days_left,
        last_upload_at: d.last_upload_at,
        last_ack_at: d.last_ack_at,
        reason: risk.reason.clone(),
    };
    (c, risk)
}

fn impact_str(i: Impact) -> &'static str {
    match i {
        Impact::Critical => "critical",
        Impact::Warning => "warning",
    }
}

/// Devices that are due soon or overdue, most urgent first (CUBE/SRST/CME before the rest).
pub fn at_risk(rows: &[FleetRow], now: DateTime<Utc>) -> Vec<DeviceCompliance> {
    let mut assessed: Vec<(DeviceCompliance, DeviceRisk)> = rows
        .iter()
        .map(|d| assess(d, now))
        .filter(|(_, r)| matches!(r.status, DeadlineStatus::DueSoon | DeadlineStatus::Overdue))
        .collect();
    assessed.sort_by(|a, b| tally_domain::risk::rank_cmp(&a.1, &b.1));
    assessed.into_iter().map(|(c, _)| c).collect()
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct RollUp {
    /// The smart account, virtual account, site or tier this line counts.
    pub key: String,
    pub devices: u64,
    pub in_compliance: u64,
    pub ack_pending: u64,
    pub ack_overdue: u64,
    /// Devices that stop working when their deadline passes and are pending or overdue.
    pub critical_at_risk: u64,
}

/// Compliance counts grouped `by` smart_account, virtual_account, site or tier.
pub fn roll_up(rows: &[FleetRow], by: &str, now: DateTime<Utc>) -> Vec<RollUp> {
    let mut out: BTreeMap<String, RollUp> = BTreeMap::new();
    for d in rows {
        let (c, _) = assess(d, now);
        let key = match by {
            "smart_account" => d.smart_account.clone(),
            "virtual_account" => format!("{}/{}", d.smart_account, d.virtual_account),
            "site" => d.site.clone(),
            _ => d.dna_tier.clone().unwrap_or_else(|| "none".into()),
        };
        let r = out.entry(key.clone()).or_insert_with(|| RollUp {
            key,
            ..RollUp::default()
        });
        r.devices += 1;
        match c.status.as_str() {
            "ack_overdue" => r.ack_overdue += 1,
            "ack_pending" => r.ack_pending += 1,
            _ => r.in_compliance += 1,
        }
        if c.impact == "critical" && c.status != "in_compliance" {
            r.critical_at_risk += 1;
        }
    }
    out.into_values().collect()
}

fn threshold_str(t: Threshold) -> String {
    match t {
        Threshold::DaysBefore(n) => format!("days_before:{n}"),
        Threshold::Passed => "passed".into(),
    }
}

fn parse_threshold(s: &str) -> Option<Threshold> {
    if s == "passed" {
        return Some(Threshold::Passed);
    }
    s.strip_prefix("days_before:")
        .and_then(|n| n.parse().ok())
        .map(Threshold::DaysBefore)
}

fn kind_str(k: AlertKind) -> &'static str {
    match k {
        AlertKind::AckDeadline => "ack_deadline",
        AlertKind::TermEnd => "term_end",
    }
}

#[derive(QueryableByName)]
struct SentRow {
    #[diesel(sql_type = Text)]
    subject: String,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Timestamptz)]
    due: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    threshold: String,
}

#[derive(QueryableByName)]
struct SilenceRow {
    #[diesel(sql_type = Nullable<Text>)]
    kind: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    site: Option<String>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    device_id: Option<Uuid>,
}

impl SilenceRow {
    /// Fields left empty match anything.
    fn matches(&self, kind: &str, site: &str, device: Uuid) -> bool {
        self.kind.as_deref().is_none_or(|k| k == kind)
            && self.site.as_deref().is_none_or(|s| s == site)
            && self.device_id.is_none_or(|id| id == device)
    }
}

async fn silences(
    c: &mut AsyncPgConnection,
    now: DateTime<Utc>,
) -> Result<Vec<SilenceRow>, diesel::result::Error> {
    diesel::sql_query("SELECT kind, site, device_id FROM sched.silences WHERE until > $1")
        .bind::<Timestamptz, _>(now)
        .load(c)
        .await
}

/// An alert about one device.
pub struct NewAlert<'a> {
    pub kind: &'a str,
    pub severity: &'a str,
    pub device: &'a FleetRow,
    /// The deadline it is about, or when the failure happened.
    pub due: DateTime<Utc>,
    /// What makes it unique for that device, kind and due time.
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
    let d = a.device;
    let id = Uuid::now_v7();
    let inserted = diesel::sql_query(
        "INSERT INTO sched.alerts (id, subject, kind, due, threshold, severity, device_id, \
         hostname, site, virtual_account, message, silenced, fired_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         ON CONFLICT (subject, kind, due, threshold) DO NOTHING",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(d.id.to_string())
    .bind::<Text, _>(a.kind)
    .bind::<Timestamptz, _>(a.due)
    .bind::<Text, _>(&a.threshold)
    .bind::<Text, _>(a.severity)
    .bind::<SqlUuid, _>(d.id)
    .bind::<Text, _>(&d.hostname)
    .bind::<Text, _>(&d.site)
    .bind::<Text, _>(&d.virtual_account)
    .bind::<Text, _>(&a.message)
    .bind::<Bool, _>(silenced)
    .bind::<Timestamptz, _>(now)
    .execute(c)
    .await?;
    if inserted == 0 {
        return Ok(Raised::Already);
    }
    if silenced {
        return Ok(Raised::Silenced);
    }
    let raised = proto::AlertRaised {
        alert_id: id.to_string(),
        kind: a.kind.to_owned(),
        severity: a.severity.to_owned(),
        subject: d.id.to_string(),
        device_id: d.id.to_string(),
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
            "device_id": d.id, "hostname": d.hostname, "site": d.site,
            "virtual_account": d.virtual_account, "due": a.due,
            "threshold": a.threshold, "message": a.message,
        });
        w.enqueue(c, id, a.kind, &payload)
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
    failures: &[(String, &'static str, String)],
) -> Result<(), diesel::result::Error> {
    if failures.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = failures
        .iter()
        .filter_map(|(d, _, _)| Uuid::parse_str(d).ok())
        .collect();
    let rows: Vec<FleetRow> = diesel::sql_query(
        "SELECT id, hostname, model, site, smart_account, virtual_account, is_cube, network_license, \
         dna_tier, first_seen_at, last_upload_at, last_ack_at FROM sched.devices WHERE id = ANY($1)",
    )
    .bind::<diesel::sql_types::Array<SqlUuid>, _>(&ids)
    .load(c)
    .await?;
    let by_id: HashMap<Uuid, &FleetRow> = rows.iter().map(|r| (r.id, r)).collect();
    let now = Utc::now();
    // The cycle's start (a fixed time for a cycle this process never saw), so a failure
    // reported twice in one cycle is one alert.
    #[derive(QueryableByName)]
    struct Started {
        #[diesel(sql_type = Timestamptz)]
        started_at: DateTime<Utc>,
    }
    let started = diesel::sql_query("SELECT started_at FROM sched.cycles WHERE id = $1")
        .bind::<SqlUuid, _>(cycle)
        .load::<Started>(c)
        .await?
        .into_iter()
        .next()
        .map_or(DateTime::UNIX_EPOCH, |s| s.started_at);
    let active = silences(c, now).await?;
    for (device, stage, reason) in failures {
        let Some(d) = Uuid::parse_str(device)
            .ok()
            .and_then(|id| by_id.get(&id).copied())
        else {
            continue;
        };
        let kind = format!("{stage}_failed");
        let severity = impact_str(role_of(&d.model, d.is_cube).impact());
        let silenced = active.iter().any(|m| m.matches(&kind, &d.site, d.id));
        let alert = NewAlert {
            kind: &kind,
            severity,
            device: d,
            due: started,
            threshold: format!("cycle:{cycle}"),
            message: format!("{}: {stage} failed in cycle {cycle}: {reason}", d.hostname),
        };
        raise(c, s, &alert, silenced, now).await?;
    }
    Ok(())
}

/// Alert kinds an operator can silence or filter on.
pub const KINDS: &[&str] = &[
    "ack_deadline",
    "term_end",
    "collection_failed",
    "upload_failed",
    "ack_failed",
];

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Evaluation {
    pub devices: usize,
    pub fired: usize,
    pub silenced: usize,
    /// False when another replica was evaluating: nothing was done.
    pub evaluated: bool,
}

/// Fires the alerts due at `now` (the real clock, or a simulated one in tests and drills):
/// each (device, kind, deadline, threshold) once, recorded with its NATS event and webhook
/// deliveries in one transaction.
pub async fn evaluate(
    s: &Scheduler,
    now: DateTime<Utc>,
) -> Result<Evaluation, tally_store::StoreError> {
    let mut conn = s.pool.get().await?;
    let out = conn
        .transaction(async |c| {
            #[derive(QueryableByName)]
            struct Locked {
                #[diesel(sql_type = Bool)]
                locked: bool,
            }
            let l: Locked = diesel::sql_query("SELECT pg_try_advisory_xact_lock($1) AS locked")
                .bind::<diesel::sql_types::BigInt, _>(ALERT_LOCK)
                .get_result(c)
                .await?;
            if !l.locked {
                return Ok(Evaluation::default());
            }
            let rows = fleet(c).await?;
            let sent: Vec<SentRow> =
                diesel::sql_query("SELECT subject, kind, due, threshold FROM sched.alerts")
                    .load(c)
                    .await?;
            let mut already: HashMap<String, HashSet<AlertKey>> = HashMap::new();
            for r in sent {
                let kind = match r.kind.as_str() {
                    "ack_deadline" => AlertKind::AckDeadline,
                    "term_end" => AlertKind::TermEnd,
                    _ => continue,
                };
                if let Some(threshold) = parse_threshold(&r.threshold) {
                    already
                        .entry(r.subject.clone())
                        .or_default()
                        .insert(AlertKey {
                            subject: r.subject,
                            kind,
                            due: r.due,
                            threshold,
                        });
                }
            }
            let silences = silences(c, now).await?;
            let empty = HashSet::new();
            let mut ev = Evaluation {
                devices: rows.len(),
                evaluated: true,
                ..Evaluation::default()
            };
            for d in &rows {
                let (comp, risk) = assess(d, now);
                let subject = d.id.to_string();
                let state = AlertState {
                    subject: subject.clone(),
                    ack_deadline: risk.deadline,
                    term_end: None,
                };
                for key in due_alerts(&state, now, already.get(&subject).unwrap_or(&empty)) {
                    let kind = kind_str(key.kind);
                    let silenced = silences.iter().any(|m| m.matches(kind, &d.site, d.id));
                    let message = match key.threshold {
                        Threshold::Passed => {
                            format!("{}: ACK deadline passed. {}", d.hostname, comp.reason)
                        }
                        Threshold::DaysBefore(n) => {
                            format!(
                                "{}: ACK deadline in {n} days or less. {}",
                                d.hostname, comp.reason
                            )
                        }
                    };
                    let alert = NewAlert {
                        kind,
                        severity: &comp.impact,
                        device: d,
                        due: key.due,
                        threshold: threshold_str(key.threshold),
                        message,
                    };
                    match raise(c, s, &alert, silenced, now).await? {
                        Raised::Delivered => ev.fired += 1,
                        Raised::Silenced => ev.silenced += 1,
                        Raised::Already => {}
                    }
                }
            }
            Ok::<_, diesel::result::Error>(ev)
        })
        .await?;
    if out.fired > 0 {
        tally_platform::metrics::inc("alerts_fired", out.fired as u64);
    }
    Ok(out)
}

/// Evaluates alerts on the configured interval, with the configured clock offset (drills).
pub async fn run_alerts(s: Scheduler) {
    loop {
        let now = Utc::now() + s.cfg.clock_offset;
        match evaluate(&s, now).await {
            Ok(e) if e.fired > 0 => tracing::info!(fired = e.fired, "alerts fired"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "alert evaluation failed"),
        }
        tokio::time::sleep(s.cfg.alert_interval).await;
    }
}
