//! renewal-scheduler: starts license cycles (on a cron schedule and on demand) and follows each
//! through its stages (collection, upload, ACK delivery) from the other services' events.

pub mod alerts;
pub mod alerts_api;
pub mod api;
pub mod compliance;
pub mod cycles;
pub mod deadlines;
pub mod fleet;
pub mod policies;
pub mod pools;
pub mod store;

use tally_bus::Bus;
use tally_store::Pool;

#[derive(Debug, Clone)]
pub struct Config {
    /// Cron expression (croner syntax, 5 or 6 fields, UTC); no scheduled cycles when absent.
    pub cron: Option<String>,
    /// How often alerts are evaluated.
    pub alert_interval: std::time::Duration,
    /// Added to the clock when evaluating alerts: a drill or a test can run the fleet's future.
    pub clock_offset: chrono::TimeDelta,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cron: None,
            alert_interval: std::time::Duration::from_secs(300),
            clock_offset: chrono::TimeDelta::zero(),
        }
    }
}

#[derive(Clone)]
pub struct Scheduler {
    pub pool: Pool,
    pub bus: Bus,
    pub cfg: std::sync::Arc<Config>,
    /// Alert webhooks (their secrets are sealed); `None` delivers alerts on NATS only.
    pub webhooks: Option<tally_webhook::Webhooks>,
}

impl Scheduler {
    /// The scheduler's clock: real time plus the configured drill offset.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now() + self.cfg.clock_offset
    }
}

pub use api::routes;

pub const DURABLE: &str = "renewal-scheduler";

/// Parses a cron expression, naming what is wrong.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    expr.parse::<croner::Cron>()
        .map_err(|e| format!("invalid cron expression {expr:?}: {e}"))
}

/// Runs the event consumer, the cron loop and the outbox relay until dropped.
pub async fn run(s: Scheduler) -> Result<(), tally_bus::BusError> {
    let mut tasks = vec![tokio::spawn(tally_bus::relay::run(
        s.bus.clone(),
        s.pool.clone(),
        tally_store::outbox::Schema::Sched,
    ))];
    tasks.push(tokio::spawn(alerts::run_alerts(s.clone())));
    if let Some(w) = &s.webhooks {
        match tally_webhook::Deliverer::new(w.clone(), tally_webhook::DeliveryConfig::default()) {
            Ok(d) => {
                let pool = s.pool.clone();
                tasks.push(tokio::spawn(async move { d.run(pool).await }));
            }
            Err(e) => tracing::error!(error = %e, "webhook delivery is off"),
        }
    }
    if let Some(expr) = &s.cfg.cron {
        match parse_cron(expr) {
            Ok(cron) => tasks.push(tokio::spawn(cycles::run_cron(s.clone(), cron))),
            Err(e) => tracing::error!("{e}; scheduled cycles are off"),
        }
    }
    let result = router(s.clone()).run(s.bus.clone(), DURABLE).await;
    for t in tasks {
        t.abort();
    }
    result
}

/// The events the scheduler consumes, each with its handler (the consumer's subjects and
/// dispatch): the fleet's copy, pool announcements, and each stage's counters of a cycle.
pub fn router(s: Scheduler) -> tally_bus::router::Router<Scheduler> {
    use cycles::Update;
    use tally_bus::proto::{
        AcksImported, AcksReceived, CollectionProgress, CollectionStarted, DevicePoliciesRead,
        DevicesDeleted, DevicesUpserted, PoolsSynced, UplinkProblem, UploadProgress,
    };
    tally_bus::router::Router::new(s)
        .on(|s, id, ev: CollectionStarted| async move { cycles::apply(&s, &id, Update::from(ev)).await })
        .on(|s, id, ev: CollectionProgress| async move { cycles::apply(&s, &id, Update::from(ev)).await })
        .on(|s, id, ev: UploadProgress| async move { cycles::apply(&s, &id, Update::from(ev)).await })
        .on(|s, id, ev: AcksImported| async move { cycles::apply(&s, &id, Update::from(ev)).await })
        .on(|s, id, ev: DevicesUpserted| async move { fleet::upsert(&s, &id, ev).await })
        .on(|s, id, ev: DevicesDeleted| async move { fleet::delete(&s, &id, ev).await })
        .on(|s, id, ev: AcksReceived| async move { fleet::acks_received(&s, &id, ev).await })
        .on(|s, id, ev: PoolsSynced| async move { pools::synced(&s, &id, ev).await })
        .on(|s, id, ev: UplinkProblem| async move { alerts::uplink::problem(&s, &id, ev).await })
        .on(|s, id, ev: DevicePoliciesRead| async move { policies::read(&s, &id, ev).await })
}
