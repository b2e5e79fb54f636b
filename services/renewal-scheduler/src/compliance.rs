//! Compliance reads: per-device compliance pages, the devices most at risk, and roll-ups per
//! smart account, virtual account, site or tier, from what the deadline engine stored.

use crate::Scheduler;
use crate::deadlines;
pub use crate::deadlines::DeviceCompliance;
use crate::store::{compliance as counts, devices};
use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tally_domain::{policy::DeadlineStatus, risk::DeviceRisk};
use utoipa::ToSchema;

pub use crate::store::compliance::{Dimension, Status};
pub use crate::store::devices::FleetRow;

/// Every device not deleted, by hostname.
pub async fn fleet(c: &mut AsyncPgConnection) -> Result<Vec<FleetRow>, diesel::result::Error> {
    devices::fleet(c).await
}

/// The scheduler's clock: real time plus the configured drill offset.
pub fn clock(s: &Scheduler) -> DateTime<Utc> {
    s.now()
}

/// Devices that are due soon or overdue, most urgent first (CUBE/SRST/CME before the rest).
pub fn at_risk(rows: &[FleetRow], now: DateTime<Utc>) -> Vec<DeviceCompliance> {
    let mut assessed: Vec<(DeviceCompliance, DeviceRisk)> = rows
        .iter()
        .map(|d| deadlines::assess(d, now))
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

impl RollUp {
    fn add(&mut self, status: Status, critical: bool, n: u64) {
        self.devices += n;
        match status {
            Status::AckOverdue => self.ack_overdue += n,
            Status::AckPending => self.ack_pending += n,
            Status::OutOfCompliance => self.out_of_compliance += n,
            Status::InCompliance => self.in_compliance += n,
        }
        if critical && status != Status::InCompliance {
            self.critical_at_risk += n;
        }
    }
}

/// Compliance counts grouped `by` a dimension, assessing each row at `now` (the oracle the
/// stored counts are tested against).
pub fn roll_up(rows: &[FleetRow], by: Dimension, now: DateTime<Utc>) -> Vec<RollUp> {
    let mut out: BTreeMap<String, RollUp> = BTreeMap::new();
    for d in rows {
        let (c, _) = deadlines::assess(d, now);
        let key = match by {
            Dimension::SmartAccount => d.smart_account.clone(),
            Dimension::VirtualAccount => format!("{}/{}", d.smart_account, d.virtual_account),
            Dimension::Site => d.site.clone(),
            Dimension::Tier => d.dna_tier.clone().unwrap_or_else(|| "none".into()),
        };
        let status = c.status.parse().unwrap_or(Status::InCompliance);
        out.entry(key.clone())
            .or_insert_with(|| RollUp {
                key,
                ..RollUp::default()
            })
            .add(status, c.impact == "critical", 1);
    }
    out.into_values().collect()
}

/// Compliance counts grouped `by` a dimension at `at`, from the maintained counts: only devices
/// whose stored status has expired by `at` are looked at one by one. An `at` before the stored
/// statuses were computed (a simulated clock going back) counts every device instead.
pub async fn summary(
    c: &mut AsyncPgConnection,
    by: Dimension,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<RollUp>, diesel::result::Error> {
    deadlines::refresh(c, now).await?;
    let as_of = devices::assessed_as_of(c)
        .await?
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let rows = if at >= as_of {
        counts::maintained(c, by, at).await?
    } else {
        counts::every_device(c, by, at).await?
    };
    let mut out: BTreeMap<String, RollUp> = BTreeMap::new();
    for r in rows {
        let n = u64::try_from(r.n).unwrap_or(0);
        out.entry(r.key.clone())
            .or_insert_with(|| RollUp {
                key: r.key,
                ..RollUp::default()
            })
            .add(r.status, r.critical, n);
    }
    Ok(out.into_values().filter(|r| r.devices > 0).collect())
}

/// Which devices a page of per-device compliance holds.
#[derive(Debug, Default, Clone)]
pub struct DeviceFilter {
    pub site: Option<String>,
    pub virtual_account: Option<String>,
    pub status: Option<Status>,
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
    deadlines::refresh(c, now).await?;
    let rows = devices::page(
        c,
        f.site.as_deref(),
        f.virtual_account.as_deref(),
        f.status.map(Status::as_str),
        at,
        f.limit,
        f.offset,
    )
    .await?;
    Ok(rows.iter().map(|d| deadlines::assess(d, at).0).collect())
}

/// The most urgent devices due soon or overdue at `at`: critical ones first, then by deadline.
pub async fn at_risk_page(
    c: &mut AsyncPgConnection,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<DeviceCompliance>, diesel::result::Error> {
    deadlines::refresh(c, now).await?;
    let rows = devices::at_risk(c, at, limit).await?;
    Ok(rows.iter().map(|d| deadlines::assess(d, at).0).collect())
}
