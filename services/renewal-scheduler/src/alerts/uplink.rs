//! Alerts from cssm-uplink's problems: a batch CSSM refused for good (its reports wait for an
//! operator's retry), ACK entries that matched no device (one alert per batch and problem), or
//! accounts CSSM does not know (one alert per pair and day).

use super::{Kind, NewAlert, Subject, raise};
use crate::Scheduler;
use crate::deadlines::{impact_str, role_of};
use crate::store::{alerts, devices};
use chrono::{DateTime, Utc};
use tally_bus::{consumer::HandlerError, proto};
use tally_domain::risk::Impact;
use tally_store::outbox::{Schema, once};
use uuid::Uuid;

/// Raises the alert for one `UplinkProblem`, once (inbox, and the alert's own key).
pub async fn problem(
    s: &Scheduler,
    msg_id: &str,
    ev: proto::UplinkProblem,
) -> Result<(), HandlerError> {
    let now = s.now();
    let mut conn = s.pool.get().await.map_err(tally_store::StoreError::from)?;
    once(&mut conn, Schema::Sched, msg_id, async |c| {
        let ids: Vec<Uuid> = ev
            .device_ids
            .iter()
            .filter_map(|d| Uuid::parse_str(d).ok())
            .collect();
        let rows = if ids.is_empty() {
            Vec::new()
        } else {
            devices::by_ids(c, &ids).await?
        };
        // Critical when a CUBE/SRST/CME gateway waits on the batch: its deadline does not.
        let impact = if rows
            .iter()
            .any(|d| role_of(&d.model, d.is_cube, &d.voice_role).impact() == Impact::Critical)
        {
            Impact::Critical
        } else {
            Impact::Warning
        };
        let what = match ev.kind.as_str() {
            "account_unknown" => format!(
                "{} reports of {} devices were not uploaded: CSSM does not know their account; they go again by themselves once the account directory resolves it (a refresh, or ids given with PUT /api/v1/uplink/accounts)",
                ev.reports,
                ev.device_ids.len()
            ),
            "ack_unmatched" => format!(
                "{} ACK entr{} from CSSM matched no device",
                ev.unmatched,
                if ev.unmatched == 1 { "y" } else { "ies" }
            ),
            _ => format!(
                "CSSM refused upload batch {} ({} reports, {} devices) for good; retry it with POST /api/v1/uplink/batches/{}/retry once the cause is fixed",
                ev.batch_id,
                ev.reports,
                ev.device_ids.len(),
                ev.batch_id
            ),
        };
        let alert = NewAlert {
            kind: Kind::UploadFailed,
            severity: impact_str(impact),
            subject: Subject {
                // One alert per unknown pair, however many batches and cycles run into it.
                id: if ev.kind == "account_unknown" {
                    format!("account:{}/{}", ev.smart_account, ev.virtual_account)
                } else {
                    format!("batch:{}", ev.batch_id)
                },
                device_id: None,
                hostname: String::new(),
                site: String::new(),
                virtual_account: ev.virtual_account.clone(),
            },
            due: {
                let at = DateTime::<Utc>::from_timestamp_millis(ev.at_ms).unwrap_or(now);
                // An unknown pair alerts once a day, not once per batch.
                if ev.kind == "account_unknown" {
                    at.date_naive().and_time(chrono::NaiveTime::MIN).and_utc()
                } else {
                    at
                }
            },
            threshold: ev.kind.clone(),
            message: format!(
                "{what} (smart account {}, virtual account {}): {}",
                ev.smart_account, ev.virtual_account, ev.reason
            ),
        };
        let silenced = alerts::active_silences(c, now)
            .await?
            .iter()
            .any(|m| m.matches(Kind::UploadFailed.as_str(), "", None));
        raise(c, s, &alert, silenced, now).await?;
        Ok::<_, HandlerError>(())
    })
    .await?;
    Ok(())
}
