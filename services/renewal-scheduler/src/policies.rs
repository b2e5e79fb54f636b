//! Each device's own policy, as rum-aggregator read it from the device (`DevicePoliciesRead`):
//! stored on the device, it replaces Cisco's default in the deadline engine (and so in
//! compliance, alerts and the Catalyst summary). When the device states its own next ACK
//! deadline and Tally's is a day or more away from it, an alert says so.

use crate::Scheduler;
use crate::alerts::{Kind, NewAlert, Subject, raise};
use crate::deadlines::{PolicyDoc, PolicySource, assess, refresh_ids};
use crate::store::{alerts, devices};
use chrono::{DateTime, Utc};
use tally_bus::{consumer::HandlerError, proto};
use tally_domain::policy::{Policy, PolicyAttrs};
use tally_store::outbox::{Schema, once};
use uuid::Uuid;

/// The stored form of one read; a row the device left out keeps Cisco's default for it.
pub fn doc_of(p: &proto::DevicePolicy) -> PolicyDoc {
    let d = Policy::cisco_default();
    let attrs = |a: &Option<proto::PolicyAttrs>, default: PolicyAttrs| {
        a.as_ref().map_or(default, |a| {
            PolicyAttrs::new(
                a.first_report_days,
                a.reporting_frequency_days,
                a.report_on_change_days,
            )
        })
    };
    let at = |ms: i64| {
        (ms > 0)
            .then(|| DateTime::<Utc>::from_timestamp_millis(ms))
            .flatten()
    };
    // Anything but a read from the device runs on Cisco's default.
    let source = p.source.parse().unwrap_or(PolicySource::Assumed);
    let policy = match source {
        PolicySource::Device => Policy {
            name: if p.name.is_empty() {
                "(unnamed)".to_owned()
            } else {
                p.name.clone()
            },
            ack_required: p.ack_required,
            perpetual: attrs(&p.perpetual, d.perpetual),
            subscription: attrs(&p.subscription, d.subscription),
            enforced: attrs(&p.enforced, d.enforced),
        },
        PolicySource::Assumed => d,
    };
    PolicyDoc {
        source,
        reason: p.reason.clone(),
        policy,
        device_ack_deadline: at(p.next_ack_deadline_ms),
        device_last_ack: at(p.last_ack_ms),
        read_at_ms: p.read_at_ms,
    }
}

/// Stores the policies (a newer read wins), reassesses the devices, and alerts on each whose
/// own ACK deadline disagrees with Tally's. A read for a device the scheduler does not hold (or
/// with a bad id) is skipped and counted: the next collection reads it again.
pub async fn read(
    s: &Scheduler,
    msg_id: &str,
    ev: proto::DevicePoliciesRead,
) -> Result<(), HandlerError> {
    let mut ids = Vec::with_capacity(ev.devices.len());
    let mut docs = Vec::with_capacity(ev.devices.len());
    let mut read_at = Vec::with_capacity(ev.devices.len());
    for p in &ev.devices {
        let Ok(id) = Uuid::parse_str(&p.device_id) else {
            tracing::warn!(device = %p.device_id, "device policy with a bad device id; skipped");
            continue;
        };
        let doc = doc_of(p);
        let v = serde_json::to_value(&doc).map_err(|e| HandlerError::Poison(e.to_string()))?;
        ids.push(id);
        docs.push(v);
        read_at.push(p.read_at_ms);
    }
    let now = s.now();
    let mut conn = s.pool.get().await.map_err(tally_store::StoreError::from)?;
    once(&mut conn, Schema::Sched, msg_id, async |c| {
        let written = devices::set_policies(c, &ids, &docs, &read_at).await?;
        if written.len() < ids.len() {
            let skipped = ids.len() - written.len();
            tracing::info!(skipped, "device policies for unknown devices, or older than stored ones");
            tally_platform::metrics::inc("device_policies_skipped", skipped as u64);
        }
        refresh_ids(c, &written, now).await?;
        let rows = devices::by_ids(c, &written).await?;
        let silences = alerts::active_silences(c, now).await?;
        for d in &rows {
            let (comp, _) = assess(d, now);
            let (Some(device), Some(tally)) = (comp.device_deadline, comp.deadline) else {
                continue;
            };
            if !comp.deadline_disagrees {
                continue;
            }
            let kind = Kind::DeadlineMismatch;
            let silenced = silences
                .iter()
                .any(|m| m.matches(kind.as_str(), &d.site, Some(d.id)));
            let alert = NewAlert {
                kind,
                severity: &comp.impact,
                subject: Subject::device(d),
                due: device,
                threshold: format!("tally:{}", tally.timestamp()),
                message: format!(
                    "{}: the device's own next ACK deadline is {}, Tally's is {} (policy {:?}, {}); check the policy installed on the device",
                    d.hostname,
                    device.to_rfc3339(),
                    tally.to_rfc3339(),
                    comp.policy_name,
                    comp.policy_source
                ),
            };
            raise(c, s, &alert, silenced, now).await?;
        }
        Ok::<_, HandlerError>(())
    })
    .await?;
    Ok(())
}
