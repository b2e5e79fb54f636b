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

tally_store::text_enum! {
    /// Where a device's policy comes from: read from the device's own state, or Cisco's default
    /// assumed because it could not be (`reason`). The same values as rum-aggregator's.
    pub enum PolicySource { Device = "device", Assumed = "assumed" }
}

/// A device's policy as stored on `sched.devices.policy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDoc {
    pub source: PolicySource,
    #[serde(default)]
    pub reason: String,
    pub policy: Policy,
    /// The device's own next ACK deadline and last ACK received, when it says.
    pub device_ack_deadline: Option<DateTime<Utc>>,
    pub device_last_ack: Option<DateTime<Utc>>,
    pub read_at_ms: i64,
}

/// Why a device without a stored policy runs on Cisco's default.
pub const NEVER_READ: &str = "the device's policy has not been read yet";

/// How far apart the device's stamp of its last ACK and Tally's record of installing it may be
/// and still be the same ACK (the device stamps when it applies it, Tally when the import
/// answered; cycles are hours or days apart).
const SAME_ACK_SECS: i64 = 3600;

/// The device's policy, where it comes from and why, and the device's own ACK deadline when it
/// is comparable with Tally's: read after the same last ACK Tally knows of, so a read taken
/// before an ACK Tally has since seen installed (or before any ACK) is not a disagreement.
pub fn policy_of(d: &FleetRow) -> (Policy, PolicySource, String, Option<DateTime<Utc>>) {
    let Some(v) = &d.policy else {
        return (
            Policy::cisco_default(),
            PolicySource::Assumed,
            NEVER_READ.to_owned(),
            None,
        );
    };
    match PolicyDoc::deserialize(v) {
        Ok(doc) => {
            let same_ack = match (doc.device_last_ack, d.last_ack_at) {
                (Some(a), Some(b)) => (a - b).num_seconds().abs() < SAME_ACK_SECS,
                // Before its first ACK the device counts from its own first use, which its
                // state does not show; Tally counts from when it first saw the device.
                _ => false,
            };
            let device = doc.device_ack_deadline.filter(|_| same_ack);
            (doc.policy, doc.source, doc.reason, device)
        }
        Err(e) => (
            Policy::cisco_default(),
            PolicySource::Assumed,
            format!("the stored policy cannot be read ({e}); Cisco's default applies"),
            None,
        ),
    }
}

/// A device's own ACK deadline and Tally's disagree when they are a day or more apart.
pub fn disagrees(tally: Option<DateTime<Utc>>, device: Option<DateTime<Utc>>) -> bool {
    match (tally, device) {
        (Some(t), Some(d)) => (t - d).num_seconds().abs() >= 86_400,
        _ => false,
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
    /// `device` (read from the device) or `assumed` (Cisco's default).
    pub policy_source: String,
    pub policy_name: String,
    /// Why the policy is assumed; empty when it was read from the device.
    pub policy_reason: String,
    /// The device's own next ACK deadline, when it reports one (and it was read after the
    /// last ACK Tally knows of).
    pub device_deadline: Option<DateTime<Utc>>,
    /// The device's deadline and Tally's are a day or more apart.
    pub deadline_disagrees: bool,
}

/// The deadlines of each license the device uses under its own policy: the network license is
/// perpetual, the DNA add-on a subscription.
fn entitlements(d: &FleetRow, policy: &Policy) -> Vec<(String, Deadlines)> {
    let usage = |kind| Usage {
        kind,
        first_use: d.first_seen_at,
        last_report: d.last_upload_at,
        last_ack: d.last_ack_at,
        // A change of licenses must be reported within the policy's report-on-change days.
        changes: d.licenses_changed_at.into_iter().collect(),
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
    let (policy, source, policy_reason, device_deadline) = policy_of(d);
    let ents = entitlements(d, &policy);
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
        policy_source: source.as_str().to_owned(),
        policy_name: policy.name,
        policy_reason,
        deadline_disagrees: disagrees(risk.deadline, device_deadline),
        device_deadline,
    };
    (c, risk, pending)
}

pub fn impact_str(i: Impact) -> &'static str {
    match i {
        Impact::Critical => "critical",
        Impact::Warning => "warning",
    }
}
