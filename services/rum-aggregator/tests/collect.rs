#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Collection from an in-process device fleet into a real database: byte-exact storage, fault
//! isolation, quarantine, replay dedupe, and the manual upload route.

mod common;

use actix_web::{http::StatusCode, test, web};
use diesel::sql_types::{Bytea, Nullable, Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use prost::Message;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_bus::proto;
use tally_domain::rum;
use tally_platform::{ApiTokens, SecretBox};
use tally_rum_aggregator::{Aggregator, Config, collect};
use tally_sim::{Fault, FleetConfig, FleetState};
use tally_testkit::{TestDb, count, fixtures};
use uuid::Uuid;

const OPERATOR: &str = "operator-token-0123456789";

struct Ctx {
    _db: TestDb,
    agg: Aggregator,
    fleet: Arc<FleetState>,
    _fleet_handle: actix_web::dev::ServerHandle,
    /// Device id of fleet index i.
    ids: Vec<Uuid>,
}

async fn setup(devices: usize, in_projection: usize) -> Ctx {
    tally_platform::init_crypto();
    let db = TestDb::new().await.unwrap();
    let pool = tally_store::pool(&db.url, 8).unwrap();
    let bus = tally_testkit::bus().await.unwrap();
    let (_addr, handle, fleet) = tally_sim::start_fleet(FleetConfig {
        devices,
        bind: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    let agg = Aggregator::new(
        pool,
        bus,
        SecretBox::from_secret("test-secret-key-0123456789"),
        Config {
            concurrency: 16,
            workers: 1,
            slice: 8,
            device_timeout: Duration::from_secs(1),
            device_retries: 0,
        },
    )
    .unwrap();
    let ids: Vec<Uuid> = (0..devices).map(|_| Uuid::now_v7()).collect();
    let mut devices = Vec::new();
    for (i, id) in ids.iter().enumerate().take(in_projection) {
        devices.push(common::device(&fleet, i, *id, &agg.secrets));
    }
    // As inventory publishes them, projected by the aggregator's own consumer.
    fixtures::publish_devices(&agg.bus, devices).await.unwrap();
    tally_testkit::consume_until(
        tally_rum_aggregator::router(agg.clone())
            .run(agg.bus.clone(), tally_rum_aggregator::DURABLE),
        &agg.pool,
        "SELECT count(*) FROM rum.devices",
        in_projection as i64,
    )
    .await;
    Ctx {
        _db: db,
        agg,
        fleet,
        _fleet_handle: handle,
        ids,
    }
}

/// Starts a cycle and collects until nothing is pending; returns the cycle id.
async fn run_cycle(agg: &Aggregator, msg_id: &str) -> Uuid {
    let cycle = Uuid::now_v7();
    collect::start_cycle(
        agg,
        msg_id,
        proto::CycleStarted {
            cycle_id: cycle.to_string(),
            trigger: "test".into(),
            started_at_ms: 0,
        },
    )
    .await
    .unwrap();
    let t = Instant::now();
    let mut handled = 0;
    loop {
        let n = collect::collect_slice(agg).await.unwrap();
        if n == 0 {
            break;
        }
        handled += n;
        assert!(t.elapsed() < Duration::from_secs(60), "collection stuck");
    }
    eprintln!("cycle {cycle}: {handled} devices in {:?}", t.elapsed());
    cycle
}

#[derive(diesel::QueryableByName)]
struct OutRow {
    #[diesel(sql_type = Text)]
    subject: String,
    #[diesel(sql_type = Bytea)]
    payload: Vec<u8>,
}

async fn outbox(agg: &Aggregator) -> Vec<OutRow> {
    let mut c = agg.pool.get().await.unwrap();
    diesel::sql_query("SELECT subject, payload FROM rum.outbox ORDER BY seq")
        .load(&mut c)
        .await
        .unwrap()
}

async fn collected_events(agg: &Aggregator, cycle: Uuid) -> Vec<proto::ReportsCollected> {
    outbox(agg)
        .await
        .into_iter()
        .filter(|r| r.subject == "rum.reports.collected")
        .map(|r| proto::ReportsCollected::decode(r.payload.as_slice()).unwrap())
        .filter(|e| e.cycle_id == cycle.to_string())
        .collect()
}

async fn progress_events(agg: &Aggregator, cycle: Uuid) -> Vec<proto::CollectionProgress> {
    outbox(agg)
        .await
        .into_iter()
        .filter(|r| r.subject == "rum.collection.progress")
        .map(|r| proto::CollectionProgress::decode(r.payload.as_slice()).unwrap())
        .filter(|e| e.cycle_id == cycle.to_string())
        .collect()
}

#[derive(diesel::QueryableByName, Debug)]
struct CollectionRow {
    #[diesel(sql_type = SqlUuid)]
    device_id: Uuid,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Nullable<Text>)]
    error: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Int4)]
    reports_new: i32,
}

async fn collections(agg: &Aggregator, cycle: Uuid) -> BTreeMap<Uuid, CollectionRow> {
    let mut c = agg.pool.get().await.unwrap();
    let rows: Vec<CollectionRow> = diesel::sql_query(
        "SELECT device_id, state, error, reports_new FROM rum.collections WHERE cycle_id = $1",
    )
    .bind::<SqlUuid, _>(cycle)
    .load(&mut c)
    .await
    .unwrap();
    rows.into_iter().map(|r| (r.device_id, r)).collect()
}

#[derive(diesel::QueryableByName)]
struct StoredBody {
    #[diesel(sql_type = Bytea)]
    body: Vec<u8>,
}

async fn stored_bodies(agg: &Aggregator, device: Uuid) -> Vec<String> {
    let mut c = agg.pool.get().await.unwrap();
    let rows: Vec<StoredBody> =
        diesel::sql_query("SELECT body FROM rum.reports WHERE device_id = $1 ORDER BY report_id")
            .bind::<SqlUuid, _>(device)
            .load(&mut c)
            .await
            .unwrap();
    rows.into_iter()
        .map(|r| String::from_utf8(r.body).unwrap())
        .collect()
}

#[derive(diesel::QueryableByName)]
struct QRow {
    #[diesel(sql_type = Nullable<SqlUuid>)]
    device_id: Option<Uuid>,
    #[diesel(sql_type = Text)]
    reason: String,
    #[diesel(sql_type = Bytea)]
    body: Vec<u8>,
}

async fn quarantine(agg: &Aggregator) -> Vec<QRow> {
    let mut c = agg.pool.get().await.unwrap();
    diesel::sql_query("SELECT device_id, reason, body FROM rum.quarantine ORDER BY id")
        .load(&mut c)
        .await
        .unwrap()
}

/// What `GET /d/<i>/smartlic-service/all-reports` answers now, split into report objects.
async fn all_reports_over_http(fleet: &FleetState, i: usize) -> Vec<String> {
    let info = fleet.info(i).unwrap();
    let text = reqwest::Client::new()
        .get(format!("{}/smartlic-service/all-reports", info.base_url))
        .basic_auth(&info.username, Some(&info.password))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    #[derive(serde::Deserialize)]
    struct All<'a> {
        #[serde(borrow)]
        usage: Vec<&'a serde_json::value::RawValue>,
    }
    let all: All<'_> = serde_json::from_str(&text).unwrap();
    all.usage.iter().map(|r| r.get().to_owned()).collect()
}

fn sorted_by_id(mut texts: Vec<String>) -> Vec<String> {
    texts.sort_by_key(|t| rum::inspect_report(t).unwrap().report_id);
    texts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collects_every_report_byte_exact() {
    let ctx = setup(20, 20).await;
    let cycle = run_cycle(&ctx.agg, "msg-2").await;

    let rows = collections(&ctx.agg, cycle).await;
    assert_eq!(rows.len(), 20);
    let mut expected_total = 0;
    for (i, id) in ctx.ids.iter().enumerate() {
        let row = &rows[id];
        assert_eq!(row.state, "done", "device {i}: {row:?}");
        assert_eq!(row.error, None);
        let device_texts = sorted_by_id(ctx.fleet.unacked_reports(i).unwrap());
        assert!(!device_texts.is_empty(), "device {i} closed no report");
        assert_eq!(
            sorted_by_id(all_reports_over_http(&ctx.fleet, i).await),
            device_texts,
            "the fleet's own view and its HTTP answer agree"
        );
        let stored = stored_bodies(&ctx.agg, *id).await;
        assert_eq!(stored, device_texts, "device {i}: stored bodies differ");
        let udi = ctx.fleet.udi(i).unwrap();
        for s in &stored {
            assert_eq!(rum::inspect_report(s).unwrap().udi, udi);
        }
        assert_eq!(row.reports_new as usize, stored.len());
        expected_total += device_texts.len();
    }
    assert_eq!(
        count(&ctx.agg.pool, "SELECT count(*) FROM rum.reports").await as usize,
        expected_total
    );
    assert_eq!(
        count(&ctx.agg.pool, "SELECT count(*) FROM rum.quarantine").await,
        0
    );

    // CollectionStarted(20), then ReportsCollected carrying every report exactly once.
    let out = outbox(&ctx.agg).await;
    let started: Vec<_> = out
        .iter()
        .filter(|r| r.subject == "rum.collection.started")
        .map(|r| proto::CollectionStarted::decode(r.payload.as_slice()).unwrap())
        .collect();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].devices, 20);
    assert_eq!(started[0].cycle_id, cycle.to_string());
    let evs = collected_events(&ctx.agg, cycle).await;
    let prog = progress_events(&ctx.agg, cycle).await;
    let ok: u32 = prog.iter().map(|e| e.devices_ok).sum();
    let with: u32 = prog.iter().map(|e| e.devices_with_reports).sum();
    let failed: u32 = prog.iter().map(|e| e.devices_failed).sum();
    let dup: u32 = prog.iter().map(|e| e.reports_duplicate).sum();
    assert_eq!((ok, with, failed, dup), (20, 20, 0, 0));
    let reports: Vec<&proto::CollectedReport> = evs.iter().flat_map(|e| &e.reports).collect();
    assert_eq!(reports.len(), expected_total);
    for r in reports {
        let i = ctx
            .ids
            .iter()
            .position(|d| d.to_string() == r.device_id)
            .unwrap();
        let info = ctx.fleet.info(i).unwrap();
        assert_eq!(r.smart_account, info.smart_account);
        assert_eq!(r.virtual_account, info.virtual_account);
        let text = String::from_utf8(r.body.clone()).unwrap();
        assert!(ctx.fleet.unacked_reports(i).unwrap().contains(&text));
        assert_eq!(rum::inspect_report(&text).unwrap().report_id, r.report_id);
    }

    // Redelivered CycleStarted: nothing queued twice.
    collect::start_cycle(
        &ctx.agg,
        "msg-2",
        proto::CycleStarted {
            cycle_id: cycle.to_string(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        count(
            &ctx.agg.pool,
            "SELECT count(*) FROM rum.collections WHERE state = 'pending'"
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_devices_fail_alone() {
    let ctx = setup(20, 20).await;
    const MALFORMED: usize = 2;
    const UNSIGNED: usize = 5;
    const HTTP500: usize = 9;
    const SLOW: usize = 13;
    ctx.fleet
        .set_fault(MALFORMED, Fault::MalformedEnvelope)
        .unwrap();
    ctx.fleet
        .set_fault(UNSIGNED, Fault::MissingSignature)
        .unwrap();
    ctx.fleet.set_fault(HTTP500, Fault::Http500).unwrap();
    ctx.fleet.set_fault(SLOW, Fault::Slow).unwrap();
    let cycle = run_cycle(&ctx.agg, "msg-2").await;
    let rows = collections(&ctx.agg, cycle).await;
    let q = quarantine(&ctx.agg).await;

    // Malformed answer: failed, the answer quarantined with its reason.
    let m = &rows[&ctx.ids[MALFORMED]];
    assert_eq!(m.state, "failed", "{m:?}");
    assert!(m.error.as_deref().unwrap().contains("all-reports"), "{m:?}");
    let mq: Vec<&QRow> = q
        .iter()
        .filter(|r| r.device_id == Some(ctx.ids[MALFORMED]))
        .collect();
    assert_eq!(mq.len(), 1);
    assert!(mq[0].reason.contains("JSON"), "{}", mq[0].reason);
    assert!(!mq[0].body.is_empty());
    assert!(stored_bodies(&ctx.agg, ctx.ids[MALFORMED]).await.is_empty());

    // Unsigned reports: each quarantined for its missing signature, none stored.
    let uq: Vec<&QRow> = q
        .iter()
        .filter(|r| r.device_id == Some(ctx.ids[UNSIGNED]))
        .collect();
    let unsigned_n = ctx.fleet.unacked_reports(UNSIGNED).unwrap().len();
    assert_eq!(uq.len(), unsigned_n);
    for r in &uq {
        assert!(r.reason.contains("signature"), "{}", r.reason);
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert!(body.get("payload").is_some() && body.get("signature").is_none());
    }
    assert!(stored_bodies(&ctx.agg, ctx.ids[UNSIGNED]).await.is_empty());
    assert_eq!(rows[&ctx.ids[UNSIGNED]].reports_new, 0);

    // HTTP 500 and timeout: failed with the reason, nothing quarantined.
    let h = &rows[&ctx.ids[HTTP500]];
    assert_eq!(h.state, "failed");
    assert!(h.error.as_deref().unwrap().contains("500"), "{h:?}");
    let s = &rows[&ctx.ids[SLOW]];
    assert_eq!(s.state, "failed");
    assert!(s.error.as_deref().unwrap().contains("timed out"), "{s:?}");
    assert_eq!(q.len(), 1 + unsigned_n);

    // Everyone else: done, reports stored exactly.
    let mut good_reports = 0;
    for (i, id) in ctx.ids.iter().enumerate() {
        if [MALFORMED, UNSIGNED, HTTP500, SLOW].contains(&i) {
            continue;
        }
        assert_eq!(rows[id].state, "done", "device {i}");
        let stored = stored_bodies(&ctx.agg, *id).await;
        assert_eq!(stored, sorted_by_id(ctx.fleet.unacked_reports(i).unwrap()));
        good_reports += stored.len();
    }
    assert_eq!(
        count(&ctx.agg.pool, "SELECT count(*) FROM rum.reports").await as usize,
        good_reports
    );

    let evs = collected_events(&ctx.agg, cycle).await;
    let prog = progress_events(&ctx.agg, cycle).await;
    let failed: u32 = prog.iter().map(|e| e.devices_failed).sum();
    let ok: u32 = prog.iter().map(|e| e.devices_ok).sum();
    let quarantined: u32 = prog.iter().map(|e| e.reports_quarantined).sum();
    assert_eq!((ok, failed), (17, 3));
    assert_eq!(quarantined as usize, 1 + unsigned_n);
    let failures: HashSet<String> = prog
        .iter()
        .flat_map(|e| &e.failures)
        .map(|f| f.device_id.clone())
        .collect();
    let expected: HashSet<String> = [MALFORMED, HTTP500, SLOW]
        .iter()
        .map(|i| ctx.ids[*i].to_string())
        .collect();
    assert_eq!(failures, expected);
    assert_eq!(
        evs.iter().map(|e| e.reports.len()).sum::<usize>(),
        good_reports
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_reports_are_duplicates() {
    let ctx = setup(10, 10).await;
    let first = run_cycle(&ctx.agg, "msg-2").await;
    let first_n = count(&ctx.agg.pool, "SELECT count(*) FROM rum.reports").await as usize;
    let first_ids: HashSet<u64> = collected_events(&ctx.agg, first)
        .await
        .iter()
        .flat_map(|e| e.reports.iter().map(|r| r.report_id))
        .collect();
    assert_eq!(first_ids.len(), first_n);

    // No ACK was installed: the devices list the old reports again, plus new ones.
    let second = run_cycle(&ctx.agg, "msg-3").await;
    let listed: usize = (0..10)
        .map(|i| ctx.fleet.unacked_reports(i).unwrap().len())
        .sum();
    let new_n = listed - first_n;
    assert!(new_n > 0);
    assert_eq!(
        count(&ctx.agg.pool, "SELECT count(*) FROM rum.reports").await as usize,
        listed,
        "old reports must not be stored twice"
    );
    let evs = collected_events(&ctx.agg, second).await;
    let prog = progress_events(&ctx.agg, second).await;
    let dup: u32 = prog.iter().map(|e| e.reports_duplicate).sum();
    assert_eq!(dup as usize, first_n);
    let second_ids: Vec<u64> = evs
        .iter()
        .flat_map(|e| e.reports.iter().map(|r| r.report_id))
        .collect();
    assert_eq!(second_ids.len(), new_n, "only new reports travel on");
    assert!(second_ids.iter().all(|id| !first_ids.contains(id)));
    let rows = collections(&ctx.agg, second).await;
    assert_eq!(
        rows.values().map(|r| r.reports_new as usize).sum::<usize>(),
        new_n
    );
    assert!(rows.values().all(|r| r.state == "done"));
}

macro_rules! upload_app {
    ($agg:expr) => {{
        let tokens = web::Data::new(ApiTokens::parse(&format!("operator:{OPERATOR}")).unwrap());
        let (app, _api) = tally_platform::api_app(Default::default(), tokens)
            .service(tally_platform::api_scope().configure(tally_rum_aggregator::routes))
            .app_data(web::Data::new($agg.clone()))
            .split_for_parts();
        test::init_service(app).await
    }};
}

macro_rules! upload {
    ($app:expr, $body:expr $(,)?) => {{
        let req = test::TestRequest::post()
            .uri("/api/v1/reports/upload")
            .insert_header(("authorization", format!("Bearer {OPERATOR}")))
            .insert_header(("content-type", "application/xml"))
            .set_payload($body)
            .to_request();
        let resp = test::call_service(&$app, req).await;
        let status = resp.status();
        let body = test::read_body(resp).await;
        (
            status,
            serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
        )
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_upload_route() {
    // Devices 0..4 are known; device 4 is not in the projection.
    let ctx = setup(5, 4).await;
    let app = upload_app!(ctx.agg);
    let mut texts = Vec::new();
    for i in 0..2 {
        ctx.fleet.close_reports(i).unwrap();
        texts.extend(ctx.fleet.unacked_reports(i).unwrap());
    }
    let n = texts.len();
    let file = rum::envelope(&texts).unwrap();

    let (status, v) = upload!(app, file.clone());
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        serde_json::json!({"reports": n, "accepted": n, "duplicates": 0})
    );
    assert_eq!(
        count(&ctx.agg.pool, "SELECT count(*) FROM rum.reports").await as usize,
        n
    );
    let mut stored = stored_bodies(&ctx.agg, ctx.ids[0]).await;
    stored.extend(stored_bodies(&ctx.agg, ctx.ids[1]).await);
    let mut want = texts.clone();
    want.sort();
    stored.sort();
    assert_eq!(stored, want, "uploaded reports stored byte-exact");
    let sent: usize = outbox(&ctx.agg)
        .await
        .iter()
        .filter(|r| r.subject == "rum.reports.collected")
        .map(|r| {
            proto::ReportsCollected::decode(r.payload.as_slice())
                .unwrap()
                .reports
                .len()
        })
        .sum();
    assert_eq!(sent, n);

    // Same file again: every report a duplicate, nothing stored or sent again.
    let (status, v) = upload!(app, file);
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        serde_json::json!({"reports": n, "accepted": 0, "duplicates": n})
    );
    assert_eq!(
        count(&ctx.agg.pool, "SELECT count(*) FROM rum.reports").await as usize,
        n
    );
    assert_eq!(
        count(
            &ctx.agg.pool,
            "SELECT count(*) FROM rum.outbox WHERE subject = 'rum.reports.collected'"
        )
        .await,
        2,
        "one event per device of the first upload, none for the replay"
    );

    // Not XML.
    let (status, v) = upload!(app, "<smartLicense><RUMReport><![CDATA[{");
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["code"], "invalid-envelope");
    let (status, v) = upload!(app, "<other/>");
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["code"], "invalid-envelope");

    // A report without its signature, first in the file.
    ctx.fleet.close_reports(2).unwrap();
    let mut r2 = ctx.fleet.unacked_reports(2).unwrap();
    let mut obj: Value = serde_json::from_str(&r2[0]).unwrap();
    obj.as_object_mut().unwrap().remove("signature");
    r2[0] = obj.to_string();
    let (status, v) = upload!(app, rum::envelope(&r2).unwrap());
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["errors"][0]["field"], "report 1", "{v}");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("signature")
    );

    // A device the projection does not know: the whole file is refused, naming its UDI.
    ctx.fleet.close_reports(3).unwrap();
    ctx.fleet.close_reports(4).unwrap();
    let mut mixed = ctx.fleet.unacked_reports(3).unwrap();
    mixed.extend(ctx.fleet.unacked_reports(4).unwrap());
    let unknown = ctx.fleet.udi(4).unwrap().to_string();
    let (status, v) = upload!(app, rum::envelope(&mixed).unwrap());
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v.to_string().contains(&unknown),
        "{v} should name {unknown}"
    );
    assert!(stored_bodies(&ctx.agg, ctx.ids[3]).await.is_empty());

    // Over 8 MiB.
    let big = vec![b' '; tally_rum_aggregator::api::MAX_UPLOAD_BYTES + 1];
    let (status, v) = upload!(app, big);
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(v["code"], "body-too-large");

    assert_eq!(
        count(&ctx.agg.pool, "SELECT count(*) FROM rum.reports").await as usize,
        n
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_lists_bodies_that_are_not_utf8() {
    let ctx = setup(1, 1).await;
    {
        let mut c = ctx.agg.pool.get().await.unwrap();
        diesel::sql_query("INSERT INTO rum.quarantine (reason, body) VALUES ('bad bytes', $1)")
            .bind::<Bytea, _>(&[0x7bu8, 0xff, 0xfe, 0x7d][..])
            .execute(&mut c)
            .await
            .unwrap();
    }
    let app = upload_app!(ctx.agg);
    let req = test::TestRequest::get()
        .uri("/api/v1/quarantine")
        .insert_header(("authorization", format!("Bearer {OPERATOR}")))
        .to_request();
    let resp = test::call_service(&app, req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let rows: Value = serde_json::from_slice(&test::read_body(resp).await).unwrap();
    assert_eq!(rows[0]["reason"], "bad bytes");
    assert_eq!(rows[0]["body"], "{\u{fffd}\u{fffd}}");
}
