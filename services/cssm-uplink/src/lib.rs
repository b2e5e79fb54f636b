//! cssm-uplink: sends collected reports to CSSM in batches per smart/virtual account and turns
//! CSSM's answer into per-device ACK events.
//!
//! Online: batches are formed in Postgres (`uplink.batches`, state `new`) before anything is sent,
//! with a nonce. A batch whose answer was lost (crash, timeout) is re-sent with the same nonce, so
//! CSSM can tell the retry from a second upload; then `poll` with backoff until `COMPLETE`.
//! Offline: the operator exports a `UD_SA_*.tar.gz` bundle of all pending reports and uploads
//! CSSM's ACK bundle; the same `AcksReceived` events follow.

pub mod accounts;
pub mod api;
pub mod batch;
pub mod offline;
pub mod store;

use std::{sync::Arc, time::Duration};
use tally_bus::Bus;
use tally_cssm::CssmClient;
use tally_store::Pool;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Online,
    Offline,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "online" => Ok(Self::Online),
            "offline" => Ok(Self::Offline),
            o => Err(format!(
                "unknown uplink mode {o:?}; expected online or offline"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    /// Most reports in one reportusage request (a device's reports never straddle two).
    pub batch_max_reports: usize,
    /// How long pending reports wait for company before a smaller batch goes.
    pub linger: Duration,
    /// First poll after an accepted upload; later polls back off up to `poll_max`.
    pub poll_initial: Duration,
    pub poll_max: Duration,
    /// `Created-By` of offline manifests.
    pub created_by: String,
    /// How often the account directory is refreshed from CSSM (online mode; zero: never on a
    /// schedule, still on a miss and on request).
    pub accounts_refresh: Duration,
    /// A miss refreshes the directory only if the last refresh is older than this, so a batch
    /// for an unknown account does not ask CSSM every time.
    pub accounts_miss_refresh: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::Online,
            batch_max_reports: 5000,
            linger: Duration::from_millis(500),
            poll_initial: Duration::from_secs(2),
            poll_max: Duration::from_secs(60),
            created_by: format!("Tally {}", env!("CARGO_PKG_VERSION")),
            accounts_refresh: Duration::from_secs(3600),
            accounts_miss_refresh: Duration::from_secs(60),
        }
    }
}

#[derive(Clone)]
pub struct Uplink {
    pub pool: Pool,
    pub bus: Bus,
    pub cssm: Option<Arc<CssmClient>>,
    pub cfg: Arc<Config>,
}

pub use api::routes;

pub const DURABLE: &str = "cssm-uplink";

/// Runs the consumer, the online sender/poller (online mode) and the relay until dropped.
pub async fn run(up: Uplink) -> Result<(), tally_bus::BusError> {
    let mut tasks = vec![tokio::spawn(tally_bus::relay::run(
        up.bus.clone(),
        up.pool.clone(),
        tally_store::outbox::Schema::Uplink,
    ))];
    if up.cfg.mode == Mode::Online {
        // Two senders: one batch's upload or poll never holds up another's.
        for _ in 0..2 {
            tasks.push(tokio::spawn(batch::run(up.clone())));
        }
        if !up.cfg.accounts_refresh.is_zero() {
            tasks.push(tokio::spawn(refresh_accounts(up.clone())));
        }
    }
    let result = router(up.clone()).run(up.bus.clone(), DURABLE).await;
    for t in tasks {
        t.abort();
    }
    result
}

/// Refreshes the account directory at start and then every `accounts_refresh`; a failure is
/// recorded and shown, and the next round tries again.
async fn refresh_accounts(up: Uplink) {
    let mut tick = tokio::time::interval(up.cfg.accounts_refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = accounts::refresh(&up).await {
            tracing::warn!(error = %e, "scheduled account directory refresh failed");
        }
    }
}

/// The events the uplink consumes, each with its handler (the consumer's subjects and dispatch).
pub fn router(up: Uplink) -> tally_bus::router::Router<Uplink> {
    use tally_bus::proto::ReportsCollected;
    tally_bus::router::Router::new(up)
        .on(|u, id, ev: ReportsCollected| async move { batch::accept(&u, &id, ev).await })
}
