//! Compliance: each device's reporting deadline from its policy and its last upload and ACK
//! (the domain's deadline engine), its risk (CUBE/SRST/CME stop working; others raise alarms),
//! roll-ups, and alerts at the thresholds, delivered once on NATS and to webhooks.

use crate::Scheduler;
use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use tally_bus::proto;
use tally_domain::{
    alert::{AlertKey, AlertKind, AlertState, AlertThresholds, Threshold, due_alerts},
    policy::{DeadlineStatus, Deadlines, LicenseKind, Policy, Usage, WARNING_DAYS},
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
    /// Holds a level whose pool in its virtual account is overcommitted.
    #[diesel(sql_type = Bool)]
    pub out_of_compliance: bool,
    /// cube, srst, cme, or empty.
    #[diesel(sql_type = Text)]
    pub voice_role: String,
}

const FLEET_COLUMNS: &str = "id, hostname, model, site, smart_account, virtual_account, \
    is_cube, network_license, dna_tier, first_seen_at, last_upload_at, last_ack_at, \
    out_of_compliance, voice_role";

pub async fn fleet(c: &mut AsyncPgConnection) -> Result<Vec<FleetRow>, diesel::result::Error> {
    diesel::sql_query(format!(
        "SELECT {FLEET_COLUMNS} FROM sched.devices WHERE NOT deleted ORDER BY hostname, id"
    ))
    .load(c)
    .await
}

/// The scheduler's clock: real time plus the configured drill offset.
pub fn clock(s: &Scheduler) -> DateTime<Utc> {
    s.now()
}

/// How long before its deadline a device counts as ACK pending (the domain's warning window),
/// in seconds as the domain counts it (days would follow the session's time zone across DST).
fn warn() -> String {
    format!("interval '{} seconds'", WARNING_DAYS * 86_400)
}

/// Devices looked at per statement when refreshing stored deadlines and statuses.
const REFRESH_CHUNK: i64 = 5000;

/// Runs the deadline engine over devices whose inputs changed (a trigger marks them), storing
/// their deadline, role and status as of `now` (the service clock, never a simulated one).
/// Rows another transaction is writing are left for the next call.
pub async fn refresh(
    c: &mut AsyncPgConnection,
    now: DateTime<Utc>,
) -> Result<usize, diesel::result::Error> {
    refresh_some(c, None, now).await
}

/// [`refresh`] limited to these devices: writers call it in their own transaction, so the
/// deadline engine's cost is paid where the change happens, not by the next reader.
pub async fn refresh_ids(
    c: &mut AsyncPgConnection,
    ids: &[Uuid],
    now: DateTime<Utc>,
) -> Result<usize, diesel::result::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    refresh_some(c, Some(ids), now).await
}

async fn refresh_some(
    c: &mut AsyncPgConnection,
    ids: Option<&[Uuid]>,
    now: DateTime<Utc>,
) -> Result<usize, diesel::result::Error> {
    let mut total = 0;
    loop {
        let n = c
            .transaction(async |c| {
                let rows: Vec<FleetRow> = diesel::sql_query(format!(
                    "SELECT {FLEET_COLUMNS} FROM sched.devices WHERE NOT assessed \
                     AND ($1::uuid[] IS NULL OR id = ANY($1)) ORDER BY id \
                     LIMIT {REFRESH_CHUNK} FOR UPDATE SKIP LOCKED"
                ))
                .bind::<Nullable<Array<SqlUuid>>, _>(ids)
                .load(c)
                .await?;
                if rows.is_empty() {
                    return Ok::<_, diesel::result::Error>(0);
                }
                let mut ids = Vec::with_capacity(rows.len());
                let mut deadlines = Vec::with_capacity(rows.len());
                let mut pending = Vec::with_capacity(rows.len());
                let mut roles = Vec::with_capacity(rows.len());
                let mut critical = Vec::with_capacity(rows.len());
                for d in &rows {
                    let (comp, risk, ack_pending) = assess_pending(d, now);
                    ids.push(d.id);
                    deadlines.push(risk.deadline);
                    pending.push(ack_pending);
                    roles.push(comp.role);
                    critical.push(risk.impact == Impact::Critical);
                }
                let w = warn();
                diesel::sql_query(format!(
                    "UPDATE sched.devices d SET deadline = u.dl, ack_pending = u.p, role = u.r, \
                     critical = u.c, assessed = true, assessed_at = $6, \
                     status = sched.compliance_status(u.dl, u.p, d.out_of_compliance, $6, {w}), \
                     status_until = sched.compliance_until(u.dl, u.p, d.out_of_compliance, $6, {w}) \
                     FROM unnest($1::uuid[], $2::timestamptz[], $3::bool[], $4::text[], $5::bool[]) \
                     AS u(id, dl, p, r, c) WHERE d.id = u.id"
                ))
                .bind::<Array<SqlUuid>, _>(&ids)
                .bind::<Array<Nullable<Timestamptz>>, _>(&deadlines)
                .bind::<Array<Bool>, _>(&pending)
                .bind::<Array<Text>, _>(&roles)
                .bind::<Array<Bool>, _>(&critical)
                .bind::<Timestamptz, _>(now)
                .execute(c)
                .await?;
                Ok(rows.len())
            })
            .await?;
        total += n;
        if n < REFRESH_CHUNK as usize {
            return Ok(total);
        }
    }
}

/// Moves stored statuses whose time has come (30 days before a deadline, the deadline itself)
/// to what they are at `now`, so roll-ups stay a read of maintained counts.
pub async fn sweep(
    c: &mut AsyncPgConnection,
    now: DateTime<Utc>,
) -> Result<usize, diesel::result::Error> {
    let w = warn();
    let mut total = 0;
    loop {
        let n = c
            .transaction(async |c| {
                let n = diesel::sql_query(format!(
                    "UPDATE sched.devices d SET \
                     status = sched.compliance_status(d.deadline, d.ack_pending, d.out_of_compliance, $1, {w}), \
                     status_until = sched.compliance_until(d.deadline, d.ack_pending, d.out_of_compliance, $1, {w}), \
                     assessed_at = $1 WHERE d.id IN (SELECT id FROM sched.devices WHERE NOT deleted AND assessed \
                     AND status_until <= $1 LIMIT {REFRESH_CHUNK} FOR UPDATE SKIP LOCKED)"
                ))
                .bind::<Timestamptz, _>(now)
                .execute(c)
                .await?;
                Ok::<_, diesel::result::Error>(n)
            })
            .await?;
        total += n;
        if n < REFRESH_CHUNK as usize {
            return Ok(total);
        }
    }
}

/// What a device is, as far as a missed deadline goes: inventory names the voice gateways
/// (CUBE, SRST, CME; older producers only flag CUBE); the rest by model.
pub fn role_of(model: &str, is_cube: bool, voice_role: &str) -> DeviceRole {
    match voice_role {
        "cube" => return DeviceRole::Cube,
        "srst" => return DeviceRole::Srst,
        "cme" => return DeviceRole::Cme,
        _ if is_cube => return DeviceRole::Cube,
        _ => {}
    }
    if model.starts_with("C9800") || model.starts_with("AIR-") {
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
    /// in_compliance, ack_pending (a report is out, or the deadline is within 30 days),
    /// out_of_compliance (a pool it draws on is overcommitted), or ack_overdue.
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
    let (c, risk, _) = assess_pending(d, now);
    (c, risk)
}

/// [`assess`], and whether an ACK is outstanding for any of the device's entitlements.
fn assess_pending(d: &FleetRow, now: DateTime<Utc>) -> (DeviceCompliance, DeviceRisk, bool) {
    let role = role_of(&d.model, d.is_cube, &d.voice_role);
    let ents = entitlements(d);
    let refs: Vec<(&str, Deadlines)> = ents.iter().map(|(n, dl)| (n.as_str(), *dl)).collect();
    let risk = DeviceRisk::assess(d.id.to_string(), role, &refs, now);
    let pending = ents.iter().any(|(_, dl)| dl.ack_pending);
    let status = match risk.status {
        DeadlineStatus::Overdue => "ack_overdue",
        _ if d.out_of_compliance => "out_of_compliance",
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
    (c, risk, pending)
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
    pub out_of_compliance: u64,
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
            "out_of_compliance" => r.out_of_compliance += 1,
            _ => r.in_compliance += 1,
        }
        if c.impact == "critical" && c.status != "in_compliance" {
            r.critical_at_risk += 1;
        }
    }
    out.into_values().collect()
}

#[derive(QueryableByName)]
struct CountRow {
    #[diesel(sql_type = Text)]
    key: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Bool)]
    critical: bool,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// A device's compliance statuses, from best to worst.
pub const STATUSES: &[&str] = &[
    "in_compliance",
    "ack_pending",
    "out_of_compliance",
    "ack_overdue",
];

/// The roll-up dimensions: what `by` may be.
pub const DIMENSIONS: &[&str] = &["smart_account", "virtual_account", "site", "tier"];

/// Compliance counts grouped `by` a dimension at `at`, from the maintained counts: only devices
/// whose stored status has expired by `at` are looked at one by one. An `at` before the stored
/// statuses were computed (a simulated clock going back) counts every device instead.
pub async fn summary(
    c: &mut AsyncPgConnection,
    by: &str,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<RollUp>, diesel::result::Error> {
    refresh(c, now).await?;
    #[derive(QueryableByName)]
    struct AsOf {
        #[diesel(sql_type = Nullable<Timestamptz>)]
        as_of: Option<DateTime<Utc>>,
    }
    // The newest time a stored status was computed at (an index lookup).
    let as_of = diesel::sql_query("SELECT max(assessed_at) AS as_of FROM sched.devices")
        .load::<AsOf>(c)
        .await?
        .into_iter()
        .next()
        .and_then(|r| r.as_of)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let w = warn();
    let keys = "FROM sched.devices d, sched.compliance_keys(d.smart_account, d.virtual_account, \
                d.site, d.dna_tier) k WHERE NOT d.deleted AND k.dim = $1";
    let sql = if at >= as_of {
        format!(
            "SELECT key, status, critical, sum(n)::int8 AS n FROM ( \
             SELECT key, status, critical, n FROM sched.compliance_counts WHERE dim = $1 \
             UNION ALL SELECT k.key, d.status, d.critical, -1 {keys} AND d.status_until <= $2 \
             UNION ALL SELECT k.key, sched.compliance_status(d.deadline, d.ack_pending, d.out_of_compliance, $2, {w}), \
             d.critical, 1 {keys} AND d.status_until <= $2 \
             ) x GROUP BY 1, 2, 3 HAVING sum(n) <> 0"
        )
    } else {
        format!(
            "SELECT k.key, sched.compliance_status(d.deadline, d.ack_pending, d.out_of_compliance, $2, {w}) AS status, \
             d.critical, count(*) AS n {keys} GROUP BY 1, 2, 3"
        )
    };
    let rows: Vec<CountRow> = diesel::sql_query(sql)
        .bind::<Text, _>(by)
        .bind::<Timestamptz, _>(at)
        .load(c)
        .await?;
    let mut out: BTreeMap<String, RollUp> = BTreeMap::new();
    for r in rows {
        let n = u64::try_from(r.n).unwrap_or(0);
        let e = out.entry(r.key.clone()).or_insert_with(|| RollUp {
            key: r.key,
            ..RollUp::default()
        });
        e.devices += n;
        match r.status.as_str() {
            "ack_overdue" => e.ack_overdue += n,
            "ack_pending" => e.ack_pending += n,
            "out_of_compliance" => e.out_of_compliance += n,
            _ => e.in_compliance += n,
        }
        if r.critical && r.status != "in_compliance" {
            e.critical_at_risk += n;
        }
    }
    Ok(out.into_values().filter(|r| r.devices > 0).collect())
}

/// Which devices a page of per-device compliance holds.
#[derive(Debug, Default, Clone)]
pub struct DeviceFilter {
    pub site: Option<String>,
    pub virtual_account: Option<String>,
    pub status: Option<String>,
    pub limit: i64,
    pub offset: i64,
}

/// One page of per-device compliance at `at`, by hostname.
pub async fn devices_page(
    c: &mut AsyncPgConnection,
    f: &DeviceFilter,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<DeviceCompliance>, diesel::result::Error> {
    refresh(c, now).await?;
    let w = warn();
    let rows: Vec<FleetRow> = diesel::sql_query(format!(
        "SELECT {FLEET_COLUMNS} FROM sched.devices WHERE NOT deleted \
         AND ($1::text IS NULL OR site = $1) AND ($2::text IS NULL OR virtual_account = $2) \
         AND ($3::text IS NULL OR sched.compliance_status(deadline, ack_pending, out_of_compliance, $4, {w}) = $3) \
         ORDER BY hostname, id LIMIT $5 OFFSET $6"
    ))
    .bind::<Nullable<Text>, _>(f.site.as_deref())
    .bind::<Nullable<Text>, _>(f.virtual_account.as_deref())
    .bind::<Nullable<Text>, _>(f.status.as_deref())
    .bind::<Timestamptz, _>(at)
    .bind::<BigInt, _>(f.limit)
    .bind::<BigInt, _>(f.offset)
    .load(c)
    .await?;
    Ok(rows.iter().map(|d| assess(d, at).0).collect())
}

/// The most urgent devices due soon or overdue at `at`: critical ones first, then by deadline.
pub async fn at_risk_page(
    c: &mut AsyncPgConnection,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<DeviceCompliance>, diesel::result::Error> {
    refresh(c, now).await?;
    let w = warn();
    let rows: Vec<FleetRow> = diesel::sql_query(format!(
        "SELECT {FLEET_COLUMNS} FROM sched.devices WHERE NOT deleted AND deadline - {w} <= $1 \
         ORDER BY NOT critical, deadline, id LIMIT $2"
    ))
    .bind::<Timestamptz, _>(at)
    .bind::<BigInt, _>(limit)
    .load(c)
    .await?;
    Ok(rows.iter().map(|d| assess(d, at).0).collect())
}

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
pub struct SilenceRow {
    #[diesel(sql_type = Nullable<Text>)]
    kind: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    site: Option<String>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    device_id: Option<Uuid>,
}

impl SilenceRow {
    /// Fields left empty match anything.
    pub fn matches(&self, kind: &str, site: &str, device: Option<Uuid>) -> bool {
        self.kind.as_deref().is_none_or(|k| k == kind)
            && self.site.as_deref().is_none_or(|s| s == site)
            && self.device_id.is_none_or(|id| Some(id) == device)
    }
}

pub async fn silences(
    c: &mut AsyncPgConnection,
    now: DateTime<Utc>,
) -> Result<Vec<SilenceRow>, diesel::result::Error> {
    diesel::sql_query("SELECT kind, site, device_id FROM sched.silences WHERE until > $1")
        .bind::<Timestamptz, _>(now)
        .load(c)
        .await
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
    pub fn device(d: &FleetRow) -> Self {
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
    pub kind: &'a str,
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
    let inserted = diesel::sql_query(
        "INSERT INTO sched.alerts (id, subject, kind, due, threshold, severity, device_id, \
         hostname, site, virtual_account, message, silenced, fired_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         ON CONFLICT (subject, kind, due, threshold) DO NOTHING",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(&d.id)
    .bind::<Text, _>(a.kind)
    .bind::<Timestamptz, _>(a.due)
    .bind::<Text, _>(&a.threshold)
    .bind::<Text, _>(a.severity)
    .bind::<Nullable<SqlUuid>, _>(d.device_id)
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
    let rows: Vec<FleetRow> = diesel::sql_query(format!(
        "SELECT {FLEET_COLUMNS} FROM sched.devices WHERE id = ANY($1)"
    ))
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
        let severity = impact_str(role_of(&d.model, d.is_cube, &d.voice_role).impact());
        let silenced = active.iter().any(|m| m.matches(&kind, &d.site, Some(d.id)));
        let alert = NewAlert {
            kind: &kind,
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

/// Alert kinds an operator can silence or filter on.
pub const KINDS: &[&str] = &[
    "ack_deadline",
    "term_end",
    "collection_failed",
    "upload_failed",
    "ack_failed",
    "out_of_compliance",
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
            refresh(c, clock(s)).await?;
            // Only devices within the widest threshold of their deadline can have one due.
            let widest = Threshold::widest_days(&AlertThresholds::default().ack_deadline);
            let rows: Vec<FleetRow> = diesel::sql_query(format!(
                "SELECT {FLEET_COLUMNS} FROM sched.devices WHERE NOT deleted \
                 AND deadline <= $1 + make_interval(days => $2) ORDER BY id"
            ))
            .bind::<Timestamptz, _>(now)
            .bind::<diesel::sql_types::Integer, _>(i32::try_from(widest).unwrap_or(i32::MAX))
            .load(c)
            .await?;
            let subjects: Vec<String> = rows.iter().map(|d| d.id.to_string()).collect();
            let sent: Vec<SentRow> = diesel::sql_query(
                "SELECT subject, kind, due, threshold FROM sched.alerts \
                 WHERE kind = 'ack_deadline' AND subject = ANY($1)",
            )
            .bind::<Array<Text>, _>(&subjects)
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
                    let silenced = silences
                        .iter()
                        .any(|m| m.matches(kind, &d.site, Some(d.id)));
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
                        subject: Subject::device(d),
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
            let (fired, quiet) = crate::pools::evaluate(c, s, now, &silences).await?;
            ev.fired += fired;
            ev.silenced += quiet;
            Ok::<_, diesel::result::Error>(ev)
        })
        .await?;
    if out.fired > 0 {
        tally_platform::metrics::inc("alerts_fired", out.fired as u64);
    }
    Ok(out)
}

/// Brings stored deadlines and statuses up to `now`, so roll-ups stay a read of counts.
pub async fn keep_statuses(
    s: &Scheduler,
    now: DateTime<Utc>,
) -> Result<(), tally_store::StoreError> {
    let mut c = s.pool.get().await?;
    refresh(&mut c, now).await?;
    sweep(&mut c, now).await?;
    Ok(())
}

/// Evaluates alerts on the configured interval, with the configured clock offset (drills).
pub async fn run_alerts(s: Scheduler) {
    loop {
        let now = clock(&s);
        if let Err(e) = keep_statuses(&s, now).await {
            tracing::warn!(error = %e, "compliance status sweep failed");
        }
        match evaluate(&s, now).await {
            Ok(e) if e.fired > 0 => tracing::info!(fired = e.fired, "alerts fired"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "alert evaluation failed"),
        }
        tokio::time::sleep(s.cfg.alert_interval).await;
    }
}
