//! What the uplink's test files share: the in-process CSSM simulator, a CSSM client for it, an
//! uplink on a fresh database, a simulated fleet's reports as one event, and the outbox.
#![allow(dead_code, unused_macros, clippy::unwrap_used, clippy::expect_used)]

use diesel::sql_types::{Bytea, Text};
use diesel_async::RunQueryDsl;
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use tally_bus::proto;
use tally_cssm_uplink::{Config, Mode, Uplink};
use tally_domain::{Udi, rum};
use tally_sim::{CssmConfig, CssmState, FleetConfig, FleetState};
use tally_testkit::TestDb;
use uuid::Uuid;

/// `X-CSW-REQUESTING-SYSTEM` as Cisco's sample sends it (the simulator refuses anything else).
pub const REQUESTING_SYSTEM: &str = r#"{"udi_pid":"TALLY","udi_serial_number":"TESTS"}"#;

pub const OPERATOR: &str = "operator-token-0123456789";

/// The uplink's routes on an app built as `tally serve` builds it.
macro_rules! app {
    ($up:expr) => {{
        let tokens = web::Data::new(
            tally_platform::ApiTokens::parse(&format!("operator:{}", $crate::common::OPERATOR))
                .unwrap(),
        );
        let (app, _api) = tally_platform::api_app(Default::default(), tokens)
            .service(tally_platform::api_scope().configure(tally_cssm_uplink::routes))
            .app_data(web::Data::new($up.clone()))
            .split_for_parts();
        test::init_service(app).await
    }};
}

pub fn auth() -> (&'static str, String) {
    ("authorization", format!("Bearer {OPERATOR}"))
}

/// Sends a request; status, headers and body bytes.
macro_rules! call {
    ($app:expr, $req:expr) => {{
        let resp = test::call_service(
            &$app,
            $req.insert_header($crate::common::auth()).to_request(),
        )
        .await;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = test::read_body(resp).await.to_vec();
        (status, headers, body)
    }};
}

pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or(serde_json::Value::Null)
}

pub struct Cssm {
    pub handle: actix_web::dev::ServerHandle,
    pub state: Arc<CssmState>,
    pub addr: std::net::SocketAddr,
}

/// The CSSM simulator on loopback, `cfg` changed by `edit` first.
pub async fn cssm_with(processing_delay: Duration, edit: impl FnOnce(&mut CssmConfig)) -> Cssm {
    tally_platform::init_crypto();
    let mut cfg = CssmConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        processing_delay,
        ..Default::default()
    };
    edit(&mut cfg);
    let (addr, handle, state) = tally_sim::start_cssm(cfg).await.unwrap();
    Cssm {
        handle,
        state,
        addr,
    }
}

pub async fn cssm(processing_delay: Duration) -> Cssm {
    cssm_with(processing_delay, |_| {}).await
}

/// A CSSM client for the simulator at `c`.
pub fn client(c: &Cssm) -> Arc<tally_cssm::CssmClient> {
    let cfg = c.state.config();
    Arc::new(
        tally_cssm::CssmClient::new(tally_cssm::CssmConfig {
            api_base: format!(
                "http://{}/services/api/smart-accounts-and-licensing/",
                c.addr
            ),
            token_url: format!("http://{}/oauth2/v1/token", c.addr),
            client_id: cfg.client_id.clone(),
            client_secret: cfg.client_secret.clone(),
            requesting_system: REQUESTING_SYSTEM.into(),
            timeout: Duration::from_secs(10),
        })
        .unwrap(),
    )
}

/// Test timings: no linger, fast polls.
pub fn fast(mode: Mode, batch_max_reports: usize) -> Config {
    Config {
        mode,
        batch_max_reports,
        linger: Duration::from_millis(0),
        poll_initial: Duration::from_millis(100),
        poll_max: Duration::from_millis(400),
        ..Default::default()
    }
}

/// An uplink on a fresh database and the per-test bus.
pub async fn uplink(cssm: Option<Arc<tally_cssm::CssmClient>>, cfg: Config) -> (TestDb, Uplink) {
    tally_platform::init_crypto();
    let db = TestDb::new().await.unwrap();
    let pool = tally_store::pool(&db.url, 8).unwrap();
    let bus = tally_testkit::bus().await.unwrap();
    let up = Uplink {
        pool,
        bus,
        cfg: Arc::new(cfg),
        cssm,
    };
    (db, up)
}

/// Reports of `n` simulated devices, as a ReportsCollected of one cycle.
pub struct Fleet {
    pub fleet: FleetState,
    pub ids: Vec<Uuid>,
    pub cycle: Uuid,
}

impl Fleet {
    pub fn new(n: usize) -> Self {
        Self {
            fleet: FleetState::new(FleetConfig {
                devices: n,
                ..Default::default()
            })
            .unwrap(),
            ids: (0..n).map(|_| Uuid::now_v7()).collect(),
            cycle: Uuid::now_v7(),
        }
    }

    /// Closes a fresh report window on every device and returns the unacked reports.
    pub fn collect(&self) -> proto::ReportsCollected {
        let mut ev = proto::ReportsCollected {
            cycle_id: self.cycle.to_string(),
            ..Default::default()
        };
        for (i, id) in self.ids.iter().enumerate() {
            self.fleet.close_reports(i).unwrap();
            let info = self.fleet.info(i).unwrap();
            for text in self.fleet.unacked_reports(i).unwrap() {
                let r = rum::inspect_report(&text).unwrap();
                ev.reports.push(proto::CollectedReport {
                    device_id: id.to_string(),
                    udi_pid: r.udi.udi_pid.clone(),
                    udi_serial: r.udi.udi_serial_number.clone(),
                    report_id: r.report_id,
                    smart_account: info.smart_account.clone(),
                    virtual_account: info.virtual_account.clone(),
                    body: text.into_bytes(),
                });
            }
        }
        ev
    }

    pub fn udi(&self, device: &str) -> Udi {
        let i = self
            .ids
            .iter()
            .position(|d| d.to_string() == device)
            .unwrap();
        self.fleet.udi(i).unwrap()
    }
}

#[derive(diesel::QueryableByName)]
pub struct OutRow {
    #[diesel(sql_type = Text)]
    pub subject: String,
    #[diesel(sql_type = Bytea)]
    pub payload: Vec<u8>,
}

/// Every event the uplink's outbox holds, in order.
pub async fn outbox(up: &Uplink) -> Vec<OutRow> {
    let mut c = up.pool.get().await.unwrap();
    diesel::sql_query("SELECT subject, payload FROM uplink.outbox ORDER BY seq")
        .load(&mut c)
        .await
        .unwrap()
}

/// The outbox's events on `subject`, decoded.
pub async fn events<M: Message + Default>(up: &Uplink, subject: &str) -> Vec<M> {
    outbox(up)
        .await
        .iter()
        .filter(|r| r.subject == subject)
        .map(|r| M::decode(r.payload.as_slice()).unwrap())
        .collect()
}
