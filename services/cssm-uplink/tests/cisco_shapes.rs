#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The uplink against a small in-process CSSM that answers in the shapes Cisco's published
//! sample code and Postman collection expect (gve-sw
//! gve_devnet_smart_licensing_using_policy_offline_reservation_tools: `smartaccount.py`, the
//! Postman collection), not in the shapes of Tally's own simulator: `poll_id` at the top level
//! (a string, or a number beyond 2^53), `OK_POLL` with a message as an error, ACK entries with
//! only `smart_license`, refusals as HTTP 4xx with `status: FAILED`.

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine;
use diesel::sql_types::{Nullable, Text};
use diesel_async::RunQueryDsl;
use prost::Message;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tally_bus::proto;
use tally_cssm_uplink::{Config, Mode, Uplink, batch};
use tally_testkit::{TestDb, count};
use uuid::Uuid;

/// One request the fake CSSM saw.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    requesting_system: Option<String>,
    /// `X-CSW-SMART-ACCOUNT-ID` and `X-CSW-VIRTUAL-ACCOUNT-ID`.
    accounts: (Option<String>, Option<String>),
    body: String,
}

/// Scripted answers, in order; the last one repeats.
#[derive(Default)]
struct Script {
    uploads: Mutex<VecDeque<(u16, String)>>,
    polls: Mutex<VecDeque<(u16, String)>>,
    seen: Mutex<Vec<Seen>>,
}

impl Script {
    fn upload(&self, status: u16, body: &str) -> &Self {
        self.uploads
            .lock()
            .unwrap()
            .push_back((status, body.to_owned()));
        self
    }
    fn poll(&self, status: u16, body: &str) -> &Self {
        self.polls
            .lock()
            .unwrap()
            .push_back((status, body.to_owned()));
        self
    }
    fn seen(&self, suffix: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path.ends_with(suffix))
            .cloned()
            .collect()
    }
}

fn next(q: &Mutex<VecDeque<(u16, String)>>) -> (u16, String) {
    let mut q = q.lock().unwrap();
    if q.len() > 1 {
        q.pop_front().unwrap()
    } else {
        q.front().cloned().unwrap_or((
            500,
            r#"{"status":"FAILED","message":"no answer scripted"}"#.into(),
        ))
    }
}

async fn handle(req: HttpRequest, body: web::Bytes, s: web::Data<Arc<Script>>) -> HttpResponse {
    let path = req.path().to_owned();
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    s.seen.lock().unwrap().push(Seen {
        path: path.clone(),
        requesting_system: header("X-CSW-REQUESTING-SYSTEM"),
        accounts: (
            header("X-CSW-SMART-ACCOUNT-ID"),
            header("X-CSW-VIRTUAL-ACCOUNT-ID"),
        ),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let (status, text) = if path.ends_with("/token") {
        (
            200,
            r#"{"access_token":"aaaaaaaaaaaaaaaaaaaaaaa","token_type":"Bearer","expires_in":3599}"#
                .to_owned(),
        )
    } else if path.ends_with("v2/devices/reportusage") {
        next(&s.uploads)
    } else if path.ends_with("v2/accounts/poll") {
        next(&s.polls)
    } else if path.ends_with("v2/accounts/search") {
        // As in Cisco's Postman collection; the names the devices carry resolve to these ids.
        (
            200,
            r#"{"message_code":"","accounts":[{"account_id":"123456","domain":"acme.example","name":"acme.example","virtual_accounts":[{"default":false,"name":"Branch-Sites","virtual_account_id":"654321"}]}],"message":"","status":"COMPLETE"}"#
                .to_owned(),
        )
    } else {
        (404, "{}".to_owned())
    };
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .content_type("application/json")
        .body(text)
}

struct Fake {
    script: Arc<Script>,
    addr: std::net::SocketAddr,
    _server: actix_web::dev::ServerHandle,
}

async fn fake() -> Fake {
    let script = Arc::new(Script::default());
    let data = web::Data::new(script.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .default_service(web::to(handle))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    Fake {
        script,
        addr,
        _server: handle,
    }
}

async fn uplink(f: &Fake) -> (TestDb, Uplink) {
    tally_platform::init_crypto();
    let db = TestDb::new().await.unwrap();
    let pool = tally_store::pool(&db.url, 8).unwrap();
    let bus = tally_testkit::bus().await.unwrap();
    let client = tally_cssm::CssmClient::new(tally_cssm::CssmConfig {
        api_base: format!(
            "http://{}/services/api/smart-accounts-and-licensing/",
            f.addr
        ),
        token_url: format!("http://{}/as/token", f.addr),
        client_id: "client-1".into(),
        client_secret: "secret".into(),
        requesting_system: "Tally tests".into(),
        timeout: Duration::from_secs(10),
    })
    .unwrap();
    let up = Uplink {
        pool,
        bus,
        cssm: Some(Arc::new(client)),
        cfg: Arc::new(Config {
            mode: Mode::Online,
            batch_max_reports: 5000,
            linger: Duration::from_millis(0),
            poll_initial: Duration::from_millis(50),
            poll_max: Duration::from_millis(200),
            ..Default::default()
        }),
    };
    (db, up)
}

/// `n` devices with two reports each, in one virtual account of one cycle.
struct Devices {
    ids: Vec<Uuid>,
    cycle: Uuid,
}

impl Devices {
    fn new(n: usize) -> Self {
        Self {
            ids: (0..n).map(|_| Uuid::now_v7()).collect(),
            cycle: Uuid::now_v7(),
        }
    }
    fn pid(&self, _i: usize) -> String {
        "C9300-48P".into()
    }
    fn serial(&self, i: usize) -> String {
        format!("FCW{:04}", i + 1)
    }
    fn event(&self) -> proto::ReportsCollected {
        let mut ev = proto::ReportsCollected {
            cycle_id: self.cycle.to_string(),
            ..Default::default()
        };
        for (i, id) in self.ids.iter().enumerate() {
            for r in 0..2u64 {
                let report_id = 1000 * (i as u64 + 1) + r;
                ev.reports.push(proto::CollectedReport {
                    device_id: id.to_string(),
                    udi_pid: self.pid(i),
                    udi_serial: self.serial(i),
                    report_id,
                    smart_account: "acme.example".into(),
                    virtual_account: "Branch-Sites".into(),
                    body: format!(
                        r#"{{"payload":"{{\"report_id\":{report_id}}}","signature":{{"sudi":{{"udi_pid":"{}","udi_serial_number":"{}"}},"signing_type":"builtin","key":"k","value":"dmFsdWU="}}}}"#,
                        self.pid(i),
                        self.serial(i)
                    )
                    .into_bytes(),
                });
            }
        }
        ev
    }
    /// An ACK document in a format that is not Tally's, naming the device by its UDI in text.
    fn doc_naming(&self, i: usize) -> String {
        format!(
            "<smartLicense><smartLicenseRumAck><data>opaque CSSM acknowledgement for PID:{},SN:{}</data><signature>c2ln</signature></smartLicenseRumAck></smartLicense>",
            self.pid(i),
            self.serial(i)
        )
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// reportusage accepted, as Cisco's Postman collection shows it (HTTP 202, top-level numeric
/// `poll_id` beyond 2^53).
const ACCEPTED_NUMERIC: &str = r#"{"status":"OK_POLL","message_code":null,"message":null,"timestamp":1644340472292,"nonce":"random1234","type":null,"poll_id":77412347487202314,"poll_interval":300,"action":"acknowledgements"}"#;

fn complete(acks: &[serde_json::Value]) -> String {
    serde_json::json!({
        "status": "COMPLETE", "message_code": "", "message": "", "timestamp": 1656610485678u64,
        "nonce": "n", "type": "acknowledgements", "data": {"acknowledgements": acks}
    })
    .to_string()
}

/// Steps the uplink until `sql` counts at least one row, or panics after `secs`.
async fn until(up: &Uplink, sql: &str, secs: u64) {
    let t = Instant::now();
    loop {
        if count(&up.pool, sql).await > 0 {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "not reached in {secs} s: {sql}"
        );
        if !batch::step(up).await.unwrap() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn start(up: &Uplink, d: &Devices) {
    batch::accept(up, &Uuid::now_v7().to_string(), d.event())
        .await
        .unwrap();
    assert_eq!(batch::form_batches(up, true).await.unwrap(), 1);
}

#[derive(diesel::QueryableByName, Debug)]
struct Row {
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Nullable<Text>)]
    error: Option<String>,
}

async fn report_rows(up: &Uplink) -> Vec<Row> {
    let mut c = up.pool.get().await.unwrap();
    diesel::sql_query("SELECT state, error FROM uplink.reports")
        .load(&mut c)
        .await
        .unwrap()
}

async fn batch_rows(up: &Uplink) -> Vec<Row> {
    let mut c = up.pool.get().await.unwrap();
    diesel::sql_query("SELECT state, error FROM uplink.batches ORDER BY created_at")
        .load(&mut c)
        .await
        .unwrap()
}

#[derive(diesel::QueryableByName)]
struct Out {
    #[diesel(sql_type = Text)]
    subject: String,
    #[diesel(sql_type = diesel::sql_types::Bytea)]
    payload: Vec<u8>,
}

async fn outbox(up: &Uplink, subject: &str) -> Vec<Vec<u8>> {
    let mut c = up.pool.get().await.unwrap();
    let rows: Vec<Out> =
        diesel::sql_query("SELECT subject, payload FROM uplink.outbox ORDER BY seq")
            .load(&mut c)
            .await
            .unwrap();
    rows.into_iter()
        .filter(|r| r.subject == subject)
        .map(|r| r.payload)
        .collect()
}

async fn device_acks(up: &Uplink) -> Vec<proto::DeviceAck> {
    outbox(up, "uplink.acks.received")
        .await
        .iter()
        .flat_map(|p| proto::AcksReceived::decode(p.as_slice()).unwrap().acks)
        .collect()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Why 2: `X-CSW-REQUESTING-SYSTEM` is a JSON UDI object, as Cisco's sample sends it. Also
/// Why 3: a top-level numeric `poll_id` (HTTP 202 `OK_POLL`) is an accepted upload, and goes
/// back to the poll as the same number, every digit kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requesting_system_is_a_json_udi_and_a_numeric_top_level_poll_id_is_read() {
    let f = fake().await;
    let d = Devices::new(1);
    f.script.upload(202, ACCEPTED_NUMERIC).poll(
        200,
        &complete(&[serde_json::json!({
            "sudi": {"udi_pid": d.pid(0), "udi_serial_number": d.serial(0)},
            "smart_license": b64(&d.doc_naming(0)),
        })]),
    );
    let (_db, up) = uplink(&f).await;
    start(&up, &d).await;
    let check = |seen: Vec<Seen>| {
        for s in seen {
            let h = s.requesting_system.as_deref().unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(h)
                .unwrap_or_else(|e| panic!("X-CSW-REQUESTING-SYSTEM {h:?} is not JSON: {e}"));
            for k in ["udi_pid", "udi_serial_number"] {
                assert!(
                    v[k].as_str().is_some_and(|s| !s.is_empty()),
                    "{k} missing in {h}"
                );
            }
        }
    };
    let t = Instant::now();
    while f.script.seen("v2/devices/reportusage").is_empty() {
        assert!(t.elapsed() < Duration::from_secs(10));
        batch::step(&up).await.unwrap();
    }
    check(f.script.seen("v2/devices/reportusage"));
    until(
        &up,
        "SELECT count(*) FROM uplink.batches WHERE state = 'complete'",
        10,
    )
    .await;
    check(f.script.seen("v2/accounts/poll"));
    // The upload and every poll name the account by the ids the search listed, as the sample's
    // poll does.
    let ids = (Some("123456".to_owned()), Some("654321".to_owned()));
    for s in f
        .script
        .seen("v2/devices/reportusage")
        .into_iter()
        .chain(f.script.seen("v2/accounts/poll"))
    {
        assert_eq!(s.accounts, ids, "{}", s.path);
    }
    assert_eq!(f.script.seen("v2/devices/reportusage").len(), 1);
    let polls = f.script.seen("v2/accounts/poll");
    assert!(!polls.is_empty());
    for p in &polls {
        let v: serde_json::Value = serde_json::from_str(&p.body).unwrap();
        assert!(v["data"]["poll_id"].is_number(), "{}", p.body);
        assert!(
            p.body.contains(r#""poll_id":77412347487202314"#),
            "{}",
            p.body
        );
    }
    assert!(report_rows(&up).await.iter().all(|r| r.state == "acked"));
}

/// Why 3: the issue's answer `{"status":"SUCCESS","message":"","poll_id":"..."}` is accepted
/// (not "malformed"), sent once (no duplicate), and every device is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_top_level_string_poll_id_is_accepted_and_sent_once() {
    let f = fake().await;
    let d = Devices::new(3);
    let acks: Vec<serde_json::Value> = (0..3)
        .map(|i| {
            serde_json::json!({
                "sudi": {"udi_pid": d.pid(i), "udi_serial_number": d.serial(i)},
                "smart_license": b64(&d.doc_naming(i)),
            })
        })
        .collect();
    f.script
        .upload(
            200,
            r#"{"status":"SUCCESS","message":"","poll_id":"p-123"}"#,
        )
        .poll(
            200,
            r#"{"status":"OK_POLL","message":"","message_code":""}"#,
        )
        .poll(200, &complete(&acks));
    let (_db, up) = uplink(&f).await;
    start(&up, &d).await;
    until(
        &up,
        "SELECT count(*) FROM uplink.batches WHERE state = 'complete'",
        10,
    )
    .await;
    assert_eq!(f.script.seen("v2/devices/reportusage").len(), 1);
    let polls = f.script.seen("v2/accounts/poll");
    assert_eq!(
        polls.len(),
        2,
        "an empty OK_POLL message is wait, then COMPLETE"
    );
    assert!(
        polls
            .iter()
            .all(|p| p.body.contains(r#""poll_id":"p-123""#))
    );
    let rows = report_rows(&up).await;
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|r| r.state == "acked"), "{rows:?}");
    assert_eq!(device_acks(&up).await.len(), 3);
}

/// Why 3: `OK_POLL` with a non-empty `message` is an error in Cisco's sample (it prints
/// `message_code` and stops); Tally used to poll it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_poll_with_a_message_fails_the_batch_with_it() {
    let f = fake().await;
    let d = Devices::new(2);
    f.script
        .upload(202, ACCEPTED_NUMERIC)
        .poll(
            200,
            r#"{"status":"OK_POLL","message":"Poll request not found","message_code":"POLL_NOT_FOUND","timestamp":1,"nonce":"n"}"#,
        );
    let (_db, up) = uplink(&f).await;
    start(&up, &d).await;
    until(
        &up,
        "SELECT count(*) FROM uplink.batches WHERE state = 'failed'",
        5,
    )
    .await;
    let b = &batch_rows(&up).await[0];
    let e = b.error.as_deref().unwrap();
    assert!(
        e.contains("Poll request not found") && e.contains("POLL_NOT_FOUND"),
        "{e}"
    );
    // Nothing polls it again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!batch::step(&up).await.unwrap());
    assert_eq!(f.script.seen("v2/accounts/poll").len(), 1);
    let rows = report_rows(&up).await;
    assert!(
        rows.iter()
            .all(|r| r.state == "failed" && r.error.as_deref().unwrap().contains("POLL_NOT_FOUND")),
        "{rows:?}"
    );
}

/// Why 3: ACK entries without `sudi` (Cisco's sample reads only `smart_license`) are matched:
/// by the UDI readable in the document, else, for a one-device request, to that device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_entries_without_sudi_are_matched_by_udi_or_to_the_only_device() {
    let f = fake().await;
    let d = Devices::new(2);
    // Out of order, no sudi, no report ids: each document shows its device's UDI.
    f.script.upload(202, ACCEPTED_NUMERIC).poll(
        200,
        &complete(&[
            serde_json::json!({"smart_license": b64(&d.doc_naming(1))}),
            serde_json::json!({"smart_license": b64(&d.doc_naming(0)), "sudi": null}),
        ]),
    );
    let (_db, up) = uplink(&f).await;
    start(&up, &d).await;
    until(
        &up,
        "SELECT count(*) FROM uplink.batches WHERE state = 'complete'",
        10,
    )
    .await;
    let acks = device_acks(&up).await;
    assert_eq!(acks.len(), 2);
    for a in &acks {
        let i = d
            .ids
            .iter()
            .position(|x| x.to_string() == a.device_id)
            .unwrap();
        assert_eq!(
            a.ack,
            d.doc_naming(i),
            "device {i} got another device's ACK"
        );
        assert_eq!(
            (a.udi_pid.clone(), a.udi_serial.clone()),
            (d.pid(i), d.serial(i))
        );
        let mut ids = a.report_ids.clone();
        ids.sort();
        let base = 1000 * (i as u64 + 1);
        assert_eq!(ids, vec![base, base + 1], "the ids sent for the device");
    }
    assert!(report_rows(&up).await.iter().all(|r| r.state == "acked"));

    // One device, a document that shows no UDI at all: it is that device's ACK.
    let f = fake().await;
    let one = Devices::new(1);
    let opaque = "<smartLicense><smartLicenseRumAck><data>b3BhcXVl</data></smartLicenseRumAck></smartLicense>";
    f.script
        .upload(200, r#"{"status":"SUCCESS","message":"","poll_id":"p-1"}"#)
        .poll(
            200,
            &complete(&[serde_json::json!({"smart_license": b64(opaque)})]),
        );
    let (_db2, up) = uplink(&f).await;
    start(&up, &one).await;
    until(
        &up,
        "SELECT count(*) FROM uplink.batches WHERE state = 'complete'",
        10,
    )
    .await;
    let acks = device_acks(&up).await;
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].device_id, one.ids[0].to_string());
    assert_eq!(acks[0].ack, opaque);
    assert!(report_rows(&up).await.iter().all(|r| r.state == "acked"));
}

/// Why 3: an ACK entry that matches no device of the batch is recorded and reported, never
/// dropped silently; the device left without an ACK fails as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_ack_entries_are_recorded_and_reported() {
    let f = fake().await;
    let d = Devices::new(2);
    let opaque = "<smartLicense><smartLicenseRumAck><data>b3BhcXVl</data></smartLicenseRumAck></smartLicense>";
    f.script.upload(202, ACCEPTED_NUMERIC).poll(
        200,
        &complete(&[
            serde_json::json!({"sudi": {"udi_pid": d.pid(0), "udi_serial_number": d.serial(0)}, "smart_license": b64(&d.doc_naming(0))}),
            serde_json::json!({"smart_license": b64(opaque)}),
            serde_json::json!({"sudi": {"udi_pid": "C9300-48P", "udi_serial_number": "STRANGER1"}, "smart_license": b64(opaque)}),
        ]),
    );
    let (_db, up) = uplink(&f).await;
    start(&up, &d).await;
    until(
        &up,
        "SELECT count(*) FROM uplink.batches WHERE state = 'complete'",
        10,
    )
    .await;
    let acks = device_acks(&up).await;
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].device_id, d.ids[0].to_string());
    assert_eq!(
        count(&up.pool, "SELECT count(*) FROM uplink.unmatched_acks").await,
        2
    );
    assert_eq!(
        count(
            &up.pool,
            "SELECT count(*) FROM uplink.unmatched_acks WHERE udi_serial = 'STRANGER1' AND reason LIKE '%not a device of this batch%'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &up.pool,
            &format!("SELECT count(*) FROM uplink.unmatched_acks WHERE udi_serial IS NULL AND ack = '{opaque}'")
        )
        .await,
        1
    );
    let problems = outbox(&up, "uplink.problem").await;
    assert_eq!(problems.len(), 1);
    assert!(contains(&problems[0], "ack_unmatched"));
    assert!(contains(&problems[0], "matched no device"));
    // The second device got no ACK: failed, as before.
    assert_eq!(
        count(
            &up.pool,
            &format!(
                "SELECT count(*) FROM uplink.reports WHERE device_id = '{}' AND state = 'failed'",
                d.ids[1]
            )
        )
        .await,
        2
    );
}

/// Why 4: a 4xx refusal (here the issue's: account names where ids belong) is permanent. The
/// batch fails with CSSM's reason after one request, the devices fail with it (the cycle sees
/// them), an `UplinkProblem` goes to the scheduler (an alert), and the reports wait for an
/// operator's `POST /api/v1/uplink/batches/{id}/retry`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_refusal_fails_the_batch_for_good_until_an_operator_retries() {
    use actix_web::test;
    const OPERATOR: &str = "operator-token-0123456789";
    let f = fake().await;
    let d = Devices::new(3);
    f.script
        .upload(
            400,
            r#"{"status":"FAILED","message":"Invalid Smart Account ID acme.example","message_code":"INVALID_SMART_ACCOUNT"}"#,
        )
        .upload(202, ACCEPTED_NUMERIC);
    f.script.poll(
        200,
        &complete(
            &(0..3)
                .map(|i| serde_json::json!({"sudi": {"udi_pid": d.pid(i), "udi_serial_number": d.serial(i)}, "smart_license": b64(&d.doc_naming(i))}))
                .collect::<Vec<_>>(),
        ),
    );
    let (_db, up) = uplink(&f).await;
    start(&up, &d).await;
    until(
        &up,
        "SELECT count(*) FROM uplink.batches WHERE state = 'failed'",
        5,
    )
    .await;
    // Not sent again, however long we wait.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!batch::step(&up).await.unwrap());
    assert_eq!(f.script.seen("v2/devices/reportusage").len(), 1);
    let b = &batch_rows(&up).await[0];
    assert!(
        b.error
            .as_deref()
            .unwrap()
            .contains("Invalid Smart Account ID acme.example"),
        "{b:?}"
    );
    let rows = report_rows(&up).await;
    assert!(
        rows.iter().all(|r| r.state == "failed"
            && r.error
                .as_deref()
                .unwrap()
                .contains("INVALID_SMART_ACCOUNT")),
        "{rows:?}"
    );
    // The cycle is told: 3 devices failed, with the reason.
    let progress: Vec<proto::UploadProgress> = outbox(&up, "uplink.upload.progress")
        .await
        .iter()
        .map(|p| proto::UploadProgress::decode(p.as_slice()).unwrap())
        .collect();
    assert_eq!(progress.iter().map(|p| p.devices_failed).sum::<u32>(), 3);
    assert!(progress.iter().all(|p| p.cycle_id == d.cycle.to_string()));
    assert!(
        progress
            .iter()
            .flat_map(|p| &p.failures)
            .all(|f| f.reason.contains("Invalid Smart Account ID"))
    );
    // And the scheduler gets one problem for the batch, naming the reason.
    let problems = outbox(&up, "uplink.problem").await;
    assert_eq!(problems.len(), 1);
    assert!(contains(&problems[0], "batch_failed"));
    assert!(contains(
        &problems[0],
        "Invalid Smart Account ID acme.example"
    ));

    // The operator retries through the API, once.
    let id: Uuid = {
        #[derive(diesel::QueryableByName)]
        struct Id {
            #[diesel(sql_type = diesel::sql_types::Uuid)]
            id: Uuid,
        }
        let mut c = up.pool.get().await.unwrap();
        diesel::sql_query("SELECT id FROM uplink.batches")
            .get_result::<Id>(&mut c)
            .await
            .unwrap()
            .id
    };
    let tokens =
        web::Data::new(tally_platform::ApiTokens::parse(&format!("operator:{OPERATOR}")).unwrap());
    let (app, _api) = tally_platform::api_app(Default::default(), tokens)
        .service(tally_platform::api_scope().configure(tally_cssm_uplink::routes))
        .app_data(web::Data::new(up.clone()))
        .split_for_parts();
    let app = test::init_service(app).await;
    let post = |uri: String| {
        test::TestRequest::post()
            .uri(&uri)
            .insert_header(("authorization", format!("Bearer {OPERATOR}")))
            .to_request()
    };
    let resp = test::call_service(&app, post(format!("/api/v1/uplink/batches/{id}/retry"))).await;
    assert_eq!(resp.status().as_u16(), 200);
    let body: serde_json::Value = test::read_body_json(resp).await;
    assert_eq!(body["reports"], 6);
    assert_eq!(
        count(
            &up.pool,
            "SELECT count(*) FROM uplink.reports WHERE state = 'pending' AND batch_id IS NULL AND error IS NULL"
        )
        .await,
        6
    );
    let again = test::call_service(&app, post(format!("/api/v1/uplink/batches/{id}/retry"))).await;
    assert_eq!(again.status().as_u16(), 409);
    let unknown = test::call_service(
        &app,
        post(format!("/api/v1/uplink/batches/{}/retry", Uuid::now_v7())),
    )
    .await;
    assert_eq!(unknown.status().as_u16(), 404);

    // The cause fixed, the reports go in a new batch and are acknowledged.
    assert_eq!(batch::form_batches(&up, true).await.unwrap(), 1);
    until(
        &up,
        "SELECT count(*) FROM uplink.batches WHERE state = 'complete'",
        10,
    )
    .await;
    assert!(report_rows(&up).await.iter().all(|r| r.state == "acked"));
    assert_eq!(f.script.seen("v2/devices/reportusage").len(), 2);
}

/// Why 4: FAILED for a reason that is not a duplicate is permanent too (reported, retryable);
/// a duplicate keeps today's handling (failed as a duplicate, nothing to retry, no problem).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_for_another_reason_is_permanent_and_a_duplicate_is_not_retried() {
    use actix_web::test;
    const OPERATOR: &str = "operator-token-0123456789";
    for (answer, permanent) in [
        (
            r#"{"status":"FAILED","message":"signature verification failed","message_code":""}"#,
            true,
        ),
        (r#"{"status":"FAILED","message":"Duplicate report"}"#, false),
    ] {
        let f = fake().await;
        let d = Devices::new(2);
        f.script.upload(200, answer);
        let (_db, up) = uplink(&f).await;
        start(&up, &d).await;
        until(
            &up,
            "SELECT count(*) FROM uplink.batches WHERE state = 'failed'",
            5,
        )
        .await;
        let rows = report_rows(&up).await;
        assert!(rows.iter().all(|r| r.state == "failed"), "{rows:?}");
        let problems = outbox(&up, "uplink.problem").await;
        let tokens = web::Data::new(
            tally_platform::ApiTokens::parse(&format!("operator:{OPERATOR}")).unwrap(),
        );
        let (app, _api) = tally_platform::api_app(Default::default(), tokens)
            .service(tally_platform::api_scope().configure(tally_cssm_uplink::routes))
            .app_data(web::Data::new(up.clone()))
            .split_for_parts();
        let app = test::init_service(app).await;
        let list = test::call_service(
            &app,
            test::TestRequest::get()
                .uri("/api/v1/uplink/batches")
                .insert_header(("authorization", format!("Bearer {OPERATOR}")))
                .to_request(),
        )
        .await;
        let list: serde_json::Value = test::read_body_json(list).await;
        let id = list[0]["id"].as_str().unwrap().to_owned();
        let resp = test::call_service(
            &app,
            test::TestRequest::post()
                .uri(&format!("/api/v1/uplink/batches/{id}/retry"))
                .insert_header(("authorization", format!("Bearer {OPERATOR}")))
                .to_request(),
        )
        .await;
        if permanent {
            assert_eq!(problems.len(), 1, "{answer}");
            assert!(contains(&problems[0], "signature verification failed"));
            assert_eq!(resp.status().as_u16(), 200, "{answer}");
        } else {
            assert!(problems.is_empty(), "{answer}");
            assert!(
                rows.iter()
                    .all(|r| r.error.as_deref().unwrap().contains("uplicate")),
                "{rows:?}"
            );
            assert_eq!(resp.status().as_u16(), 409, "{answer}");
        }
    }
}

/// Why 4: transient errors (5xx, 429, 408) keep the batch in line with a capped backoff, and it
/// goes through once CSSM answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_back_off_with_a_cap_then_go_through() {
    let f = fake().await;
    let d = Devices::new(1);
    f.script
        .upload(503, "Service Unavailable")
        .upload(429, r#"{"status":"FAILED","message":"rate limited"}"#)
        .upload(408, "")
        .upload(502, "<html>bad gateway</html>")
        .upload(500, "")
        .upload(503, "")
        .upload(200, r#"{"status":"SUCCESS","message":"","poll_id":"p-9"}"#)
        .poll(503, "")
        .poll(
            200,
            &complete(&[serde_json::json!({"smart_license": b64(&d.doc_naming(0))})]),
        );
    let (_db, up) = uplink(&f).await;
    start(&up, &d).await;
    // While failing, the next attempt is never further away than poll_max (200 ms).
    let t = Instant::now();
    while f.script.seen("v2/devices/reportusage").len() < 6 {
        assert!(t.elapsed() < Duration::from_secs(10));
        if !batch::step(&up).await.unwrap() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            count(
                &up.pool,
                "SELECT count(*) FROM uplink.batches WHERE state = 'new' AND next_attempt_at <= now() + interval '250 milliseconds'"
            )
            .await,
            1
        );
    }
    until(
        &up,
        "SELECT count(*) FROM uplink.batches WHERE state = 'complete'",
        10,
    )
    .await;
    assert_eq!(f.script.seen("v2/devices/reportusage").len(), 7);
    assert!(report_rows(&up).await.iter().all(|r| r.state == "acked"));
    assert!(outbox(&up, "uplink.problem").await.is_empty());
}
