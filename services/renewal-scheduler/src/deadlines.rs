//! The deadline engine: each device's reporting deadline from its policy and its last upload
//! and ACK, its role and impact (CUBE/SRST/CME stop working; others raise alarms), and its
//! status, stored on the device so roll-ups are a read of maintained counts.

use crate::store::devices::{self, Assessments, FleetRow};
use crate::store::{REFRESH_CHUNK, compliance::Status};
use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde::{Deserialize, Serialize};
use tally_domain::{
    policy::{DeadlineStatus, Deadlines, LicenseKind, Policy, Usage},
    risk::{DeviceRisk, DeviceRole, Impact},
};
use utoipa::ToSchema;
use uuid::Uuid;

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
                let rows = devices::claim_unassessed(c, ids).await?;
                if rows.is_empty() {
                    return Ok::<_, diesel::result::Error>(0);
                }
                let mut a = Assessments {
                    ids: Vec::with_capacity(rows.len()),
                    deadlines: Vec::with_capacity(rows.len()),
                    ack_pending: Vec::with_capacity(rows.len()),
                    roles: Vec::with_capacity(rows.len()),
                    critical: Vec::with_capacity(rows.len()),
                };
                for d in &rows {
                    let (comp, risk, ack_pending) = assess_pending(d, now);
                    a.ids.push(d.id);
                    a.deadlines.push(risk.deadline);
                    a.ack_pending.push(ack_pending);
                    a.roles.push(comp.role);
                    a.critical.push(risk.impact == Impact::Critical);
                }
                devices::store_assessments(c, &a, now).await?;
                Ok(rows.len())
            })
            .await?;
        total += n;
        if n < REFRESH_CHUNK {
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
    let mut total = 0;
    loop {
        let n = c
            .transaction(async |c| devices::sweep_chunk(c, now).await)
            .await?;
        total += n;
        if n < REFRESH_CHUNK {
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
        DeadlineStatus::Overdue => Status::AckOverdue,
        _ if d.out_of_compliance => Status::OutOfCompliance,
        DeadlineStatus::DueSoon => Status::AckPending,
        _ if pending => Status::AckPending,
        _ => Status::InCompliance,
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
        status: status.as_str().to_owned(),
        deadline: risk.deadline,
        days_left: risk.days_left,
        last_upload_at: d.last_upload_at,
        last_ack_at: d.last_ack_at,
        reason: risk.reason.clone(),
    };
    (c, risk, pending)
}

pub fn impact_str(i: Impact) -> &'static str {
    match i {
        Impact::Critical => "critical",
        Impact::Warning => "warning",
    }
}
