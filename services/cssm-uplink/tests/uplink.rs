#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Uplink against the in-process CSSM simulator with real signed reports: batching, polling,
//! ACK events, duplicate refusal, and the offline bundle round trip.

use diesel::sql_types::{Array, BigInt, Nullable, Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};
use tally_bus::{consumer::HandlerError, proto};
use tally_cssm_uplink::{Mode, Uplink, batch, offline};
use tally_domain::{bundle::AckBundle, sign::Signer};
use tally_testkit::{TestDb, count};
use uuid::Uuid;

mod common;
use common::{Cssm, Fleet};

async fn cssm() -> Cssm {
    common::cssm(Duration::from_millis(200)).await
}

async fn uplink(cssm: Option<&Cssm>, batch_max_reports: usize) -> (TestDb, Uplink) {
    let mode = if cssm.is_some() {
        Mode::Online
    } else {
        Mode::Offline
    };
    common::uplink(
        cssm.map(common::client),
        common::fast(mode, batch_max_reports),
    )
    .await
}

async fn acks_received(up: &Uplink) -> Vec<proto::AcksReceived> {
    common::events(up, "uplink.acks.received").await
}

async fn progress(up: &Uplink) -> Vec<proto::UploadProgress> {
    common::events(up, "uplink.upload.progress").await
}

/// Works batches until none is new or polling (or 30 s pass).
async fn drain(up: &Uplink) {
    let t = Instant::now();
    loop {
        let open = count(
            &up.pool,
            "SELECT count(*) FROM uplink.batches WHERE state IN ('new', 'polling')",
        )
        .await;
        if open == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "batches stuck");
        if !batch::step(up).await.unwrap() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!("batches drained in {:?}", t.elapsed());
}

fn cssm_key() -> Vec<u8> {
    Signer::derive(b"tally-sim-cssm", "cssm-ack")
        .unwrap()
        .public_key()
}

#[derive(diesel::QueryableByName)]
struct ReportRow {
    #[diesel(sql_type = SqlUuid)]
    device_id: Uuid,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    batch_id: Option<Uuid>,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Nullable<Text>)]
    error: Option<String>,
}

async fn reports(up: &Uplink) -> Vec<ReportRow> {
    let mut c = up.pool.get().await.unwrap();
    diesel::sql_query("SELECT device_id, batch_id, state, error FROM uplink.reports")
        .load(&mut c)
        .await
        .unwrap()
}

/// Checks the AcksReceived events against what was sent: one verified ACK per device, naming
/// exactly that device's report ids.
fn check_acks(acks: &[proto::DeviceAck], ev: &proto::ReportsCollected, fleet: &Fleet) {
    let mut sent: HashMap<String, HashSet<u64>> = HashMap::new();
    for r in &ev.reports {
        sent.entry(r.device_id.clone())
            .or_default()
            .insert(r.report_id);
    }
    assert_eq!(acks.len(), sent.len());
    let key = cssm_key();
    let mut seen = HashSet::new();
    for a in acks {
        assert!(seen.insert(a.device_id.clone()), "two ACKs for one device");
        assert_eq!(a.cycle_id, fleet.cycle.to_string());
        // Only the simulators read their own ACK format; the uplink passes it on untouched.
        let doc = tally_sim::ack::parse_ack_document(&a.ack).unwrap();
        doc.verify(&key).unwrap();
        assert_eq!(doc.body.status, "ACK");
        let udi = fleet.udi(&a.device_id);
        assert_eq!(doc.body.sudi, udi);
        assert_eq!(a.udi_pid, udi.udi_pid);
        let ids: HashSet<u64> = doc.body.report_ids.iter().copied().collect();
        assert_eq!(ids, sent[&a.device_id], "device {}", a.device_id);
        let ids: HashSet<u64> = a.report_ids.iter().copied().collect();
        assert_eq!(ids, sent[&a.device_id]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collect_event_is_handled_once_even_when_empty_or_poisoned() {
    let (_db, up) = uplink(None, 5000).await;
    let claimed = async |id: &str| {
        count(
            &up.pool,
            &format!("SELECT count(*) FROM uplink.inbox WHERE msg_id = '{id}'"),
        )
        .await
    };
    // No reports: nothing stored, but the id is claimed like any other.
    let empty = proto::ReportsCollected {
        cycle_id: Uuid::now_v7().to_string(),
        ..Default::default()
    };
    batch::accept(&up, "m-empty", empty.clone()).await.unwrap();
    batch::accept(&up, "m-empty", empty).await.unwrap();
    assert_eq!(claimed("m-empty").await, 1);
    // A device id that is not a UUID is poison, refused before anything is claimed.
    let mut bad = Fleet::new(1).collect();
    bad.reports[0].device_id = "not-a-uuid".into();
    let err = batch::accept(&up, "m-bad", bad).await.unwrap_err();
    assert!(matches!(err, HandlerError::Poison(_)), "{err:?}");
    assert_eq!(claimed("m-bad").await, 0);
    // A message handled once is skipped on redelivery, even with other contents.
    let ev = Fleet::new(2).collect();
    let n = ev.reports.len() as i64;
    batch::accept(&up, "m-1", ev).await.unwrap();
    batch::accept(&up, "m-1", Fleet::new(3).collect())
        .await
        .unwrap();
    assert_eq!(
        count(&up.pool, "SELECT count(*) FROM uplink.reports").await,
        n
    );
    assert_eq!(claimed("m-1").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_upload_acks_every_device() {
    let cssm = cssm().await;
    let (_db, up) = uplink(Some(&cssm), 5000).await;
    let fleet = Fleet::new(10);
    let ev = fleet.collect();
    let total = ev.reports.len();
    batch::accept(&up, "m-1", ev.clone()).await.unwrap();
    // Redelivery changes nothing.
    batch::accept(&up, "m-1", ev.clone()).await.unwrap();
    assert_eq!(
        count(&up.pool, "SELECT count(*) FROM uplink.reports").await as usize,
        total
    );
    let vas: HashSet<&str> = ev
        .reports
        .iter()
        .map(|r| r.virtual_account.as_str())
        .collect();
    let formed = batch::form_batches(&up, true).await.unwrap();
    assert_eq!(formed, vas.len(), "one batch per virtual account");
    drain(&up).await;

    let rows = reports(&up).await;
    assert_eq!(rows.len(), total);
    assert!(
        rows.iter().all(|r| r.state == "acked" && r.error.is_none()),
        "{:?}",
        rows.iter()
            .map(|r| (&r.state, &r.error))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        count(&up.pool, "SELECT count(*) FROM uplink.acks").await,
        10
    );
    assert_eq!(
        count(
            &up.pool,
            "SELECT count(*) FROM uplink.batches WHERE state = 'complete'"
        )
        .await as usize,
        vas.len()
    );
    let events = acks_received(&up).await;
    assert!(events.iter().all(|e| e.source == "online"));
    let acks: Vec<proto::DeviceAck> = events.into_iter().flat_map(|e| e.acks).collect();
    check_acks(&acks, &ev, &fleet);
    let p = progress(&up).await;
    assert_eq!(
        p.iter().map(|e| e.reports_uploaded as usize).sum::<usize>(),
        total
    );
    assert_eq!(p.iter().map(|e| e.devices_failed).sum::<u32>(), 0);
    assert_eq!(cssm.state.stats().reports_accepted as usize, total);
    assert_eq!(cssm.state.accepted_reports(), total);

    // The ACKs install on the devices.
    for a in &acks {
        let i = fleet
            .ids
            .iter()
            .position(|d| d.to_string() == a.device_id)
            .unwrap();
        let n = fleet.fleet.import_ack(i, &a.ack).unwrap();
        assert_eq!(n, a.report_ids.len());
    }
    assert_eq!(fleet.fleet.summary()["unacked_reports"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_batches_keep_each_device_whole() {
    let cssm = cssm().await;
    let (_db, up) = uplink(Some(&cssm), 5).await;
    let fleet = Fleet::new(10);
    let ev = fleet.collect();
    let total = ev.reports.len();
    batch::accept(&up, "m-1", ev.clone()).await.unwrap();
    let t = Instant::now();
    loop {
        let n = batch::form_batches(&up, true).await.unwrap();
        if n == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10));
    }
    assert_eq!(
        count(
            &up.pool,
            "SELECT count(*) FROM uplink.reports WHERE state = 'pending'"
        )
        .await,
        0
    );
    let rows = reports(&up).await;
    let mut batches_of: BTreeMap<Uuid, HashSet<Uuid>> = BTreeMap::new();
    let mut per_batch: BTreeMap<Uuid, usize> = BTreeMap::new();
    for r in &rows {
        let b = r.batch_id.unwrap();
        batches_of.entry(r.device_id).or_default().insert(b);
        *per_batch.entry(b).or_default() += 1;
    }
    for (d, bs) in &batches_of {
        assert_eq!(bs.len(), 1, "device {d} split across batches {bs:?}");
    }
    assert!(per_batch.values().all(|n| *n <= 5), "{per_batch:?}");
    let vas: HashSet<&str> = ev
        .reports
        .iter()
        .map(|r| r.virtual_account.as_str())
        .collect();
    assert!(
        per_batch.len() > vas.len(),
        "{total} reports in batches of at most 5 need more than one batch per VA"
    );
    drain(&up).await;
    assert!(reports(&up).await.iter().all(|r| r.state == "acked"));
    assert_eq!(
        count(&up.pool, "SELECT count(*) FROM uplink.acks").await,
        10
    );
    let acks: Vec<proto::DeviceAck> = acks_received(&up)
        .await
        .into_iter()
        .flat_map(|e| e.acks)
        .collect();
    check_acks(&acks, &ev, &fleet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_cssm_already_has_fail_as_duplicates() {
    let cssm = cssm().await;
    let fleet = Fleet::new(10);
    let ev = fleet.collect();
    let total = ev.reports.len();
    {
        let (_db, up) = uplink(Some(&cssm), 5000).await;
        batch::accept(&up, "m-1", ev.clone()).await.unwrap();
        batch::form_batches(&up, true).await.unwrap();
        drain(&up).await;
        assert!(reports(&up).await.iter().all(|r| r.state == "acked"));
    }
    // A second installation (fresh database) sends the very same reports.
    let (_db, up) = uplink(Some(&cssm), 5000).await;
    batch::accept(&up, "m-1", ev.clone()).await.unwrap();
    batch::form_batches(&up, true).await.unwrap();
    drain(&up).await;
    let rows = reports(&up).await;
    assert_eq!(rows.len(), total);
    for r in &rows {
        assert_eq!(r.state, "failed");
        assert!(
            r.error.as_deref().unwrap().contains("duplicate"),
            "{:?}",
            r.error
        );
    }
    assert_eq!(count(&up.pool, "SELECT count(*) FROM uplink.acks").await, 0);
    assert!(acks_received(&up).await.is_empty());
    let p = progress(&up).await;
    assert_eq!(p.iter().map(|e| e.devices_failed).sum::<u32>(), 10);
    assert_eq!(
        p.iter().map(|e| e.reports_failed as usize).sum::<usize>(),
        total
    );
    let failed: HashSet<String> = p
        .iter()
        .flat_map(|e| &e.failures)
        .map(|f| f.device_id.clone())
        .collect();
    assert_eq!(failed.len(), 10);
    assert!(p.iter().all(|e| e.cycle_id == fleet.cycle.to_string()));
    assert_eq!(cssm.state.stats().duplicates as usize, total);
    assert_eq!(
        count(
            &up.pool,
            "SELECT count(*) FROM uplink.batches WHERE state = 'failed'"
        )
        .await,
        count(&up.pool, "SELECT count(*) FROM uplink.batches").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_bundle_round_trip() {
    let cssm = cssm().await;
    let (_db, up) = uplink(None, 5000).await;
    let fleet = Fleet::new(10);
    let ev = fleet.collect();
    let total = ev.reports.len();
    batch::accept(&up, "m-1", ev.clone()).await.unwrap();
    // Offline mode: nothing goes online.
    assert!(!batch::step(&up).await.unwrap());

    let export = offline::export(&up, None).await.unwrap();
    assert_eq!(export.reports, total);
    assert_eq!(export.devices, 10);
    assert!(
        export.file_name.starts_with("UD_SA_"),
        "{}",
        export.file_name
    );
    assert_eq!(
        count(
            &up.pool,
            "SELECT count(*) FROM uplink.reports WHERE state = 'exported'"
        )
        .await as usize,
        total
    );
    // Nothing left: a second export is a 409.
    let again = offline::export(&up, None).await.err().unwrap();
    assert_eq!(again.status, 409);
    assert_eq!(again.code, "nothing-to-export");

    let ack_bytes = cssm.state.offline_usage(&export.bytes).unwrap();
    assert_eq!(cssm.state.stats().reports_accepted as usize, total);

    // A bundle that also names a device we never exported: the ten are imported, the stranger
    // is named (tests/offline.rs covers the mixed bundles).
    let mut files = AckBundle::from_tar_gz(&ack_bytes).unwrap();
    assert_eq!(files.len(), 10);
    let stranger = Uuid::now_v7();
    let mut extra = files[0].clone();
    extra.device_id = stranger.to_string();
    files.push(extra);
    let mixed = AckBundle {
        timestamp: 1,
        vas: vec![("Campus".into(), files)],
    }
    .to_tar_gz()
    .unwrap();
    // Garbage is a 400.
    let p = offline::import_acks(&up, b"not a tarball")
        .await
        .err()
        .unwrap();
    assert_eq!(p.status, 400);
    assert_eq!(p.code, "invalid-bundle");

    let r = offline::import_acks(&up, &mixed).await.unwrap();
    assert_eq!(r.files, 11);
    assert_eq!(r.devices_acked, 10);
    assert_eq!(r.not_imported, 1);
    let named: Vec<_> = r
        .outcomes
        .iter()
        .filter(|o| o.outcome != "imported")
        .collect();
    assert_eq!(named.len(), 1);
    assert!(named[0].file.contains(&stranger.to_string()));
    assert_eq!(named[0].outcome, "unknown-device");
    let rows = reports(&up).await;
    assert!(rows.iter().all(|r| r.state == "acked"));
    assert_eq!(
        count(&up.pool, "SELECT count(*) FROM uplink.acks").await,
        10
    );
    let events = acks_received(&up).await;
    assert!(events.iter().all(|e| e.source == "offline"));
    let acks: Vec<proto::DeviceAck> = events.into_iter().flat_map(|e| e.acks).collect();
    check_acks(&acks, &ev, &fleet);

    // The same ACK bundle again: nothing is waiting any more, every file says so.
    let r = offline::import_acks(&up, &ack_bytes).await.unwrap();
    assert_eq!((r.devices_acked, r.not_imported), (0, 10));
    assert!(r.outcomes.iter().all(|o| o.outcome == "already-imported"));
    assert_eq!(
        count(&up.pool, "SELECT count(*) FROM uplink.acks").await,
        10
    );

    // Ids stay u64 end to end.
    let mut c = up.pool.get().await.unwrap();
    #[derive(diesel::QueryableByName)]
    struct Ids {
        #[diesel(sql_type = Array<BigInt>)]
        report_ids: Vec<i64>,
    }
    let stored: Vec<Ids> = diesel::sql_query("SELECT report_ids FROM uplink.acks")
        .load(&mut c)
        .await
        .unwrap();
    assert_eq!(
        stored.iter().map(|r| r.report_ids.len()).sum::<usize>(),
        total
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_duplicates_fail_and_the_rest_go_again() {
    let cssm = cssm().await;
    let fleet = Fleet::new(10);
    let ev = fleet.collect();
    let total = ev.reports.len();
    // Another installation already sent the reports of the first five devices.
    let first_five: HashSet<String> = fleet.ids[..5].iter().map(|d| d.to_string()).collect();
    let mut part = ev.clone();
    part.reports.retain(|r| first_five.contains(&r.device_id));
    let part_n = part.reports.len();
    {
        let (_db, other) = uplink(Some(&cssm), 5000).await;
        batch::accept(&other, "m-1", part).await.unwrap();
        batch::form_batches(&other, true).await.unwrap();
        drain(&other).await;
    }
    let (_db, up) = uplink(Some(&cssm), 5000).await;
    batch::accept(&up, "m-1", ev.clone()).await.unwrap();
    let t = Instant::now();
    loop {
        batch::form_batches(&up, true).await.unwrap();
        drain(&up).await;
        let pending = count(
            &up.pool,
            "SELECT count(*) FROM uplink.reports WHERE state IN ('pending', 'batched')",
        )
        .await;
        if pending == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30));
    }
    let rows = reports(&up).await;
    for r in &rows {
        if first_five.contains(&r.device_id.to_string()) {
            assert_eq!(r.state, "failed");
            assert!(r.error.as_deref().unwrap().contains("duplicate"));
        } else {
            assert_eq!(r.state, "acked", "{:?}", r.error);
        }
    }
    assert_eq!(count(&up.pool, "SELECT count(*) FROM uplink.acks").await, 5);
    let acks: Vec<proto::DeviceAck> = acks_received(&up)
        .await
        .into_iter()
        .flat_map(|e| e.acks)
        .collect();
    let mut rest = ev.clone();
    rest.reports.retain(|r| !first_five.contains(&r.device_id));
    check_acks(&acks, &rest, &fleet);
    let p = progress(&up).await;
    assert_eq!(p.iter().map(|e| e.devices_failed).sum::<u32>(), 5);
    assert_eq!(
        p.iter().map(|e| e.reports_failed as usize).sum::<usize>(),
        part_n
    );
    assert_eq!(
        p.iter().map(|e| e.reports_uploaded as usize).sum::<usize>(),
        total - part_n
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_of_two_exports_in_flight_go_to_the_oldest_waiting_export() {
    let cssm = cssm().await;
    let (_db, up) = uplink(None, 5000).await;
    let fleet = Fleet::new(3);
    let first = fleet.collect();
    let n1 = first.reports.len();
    let first_ids: std::collections::BTreeSet<i64> =
        first.reports.iter().map(|r| r.report_id as i64).collect();
    batch::accept(&up, "m-1", first).await.unwrap();
    let export1 = offline::export(&up, None).await.unwrap();
    // The same devices report again before the first bundle's answer came back.
    let second = fleet.collect();
    let n2 = second.reports.len() - n1;
    batch::accept(&up, "m-2", second).await.unwrap();
    let export2 = offline::export(&up, None).await.unwrap();
    assert_eq!((export1.reports, export2.reports), (n1, n2));
    let acks1 = cssm.state.offline_usage(&export1.bytes).unwrap();
    let acks2 = cssm.state.offline_usage(&export2.bytes).unwrap();

    // Answers come back out of order. ACK documents are opaque, so an ACK cannot say which of
    // a device's reports it covers: each goes to the device's oldest export still waiting.
    offline::import_acks(&up, &acks2).await.unwrap();
    let state = |s: &'static str| {
        let up = &up;
        async move {
            count(
                &up.pool,
                &format!("SELECT count(*) FROM uplink.reports WHERE state = '{s}'"),
            )
            .await as usize
        }
    };
    assert_eq!((state("acked").await, state("exported").await), (n1, n2));
    let acked: std::collections::BTreeSet<i64> = {
        let mut c = up.pool.get().await.unwrap();
        diesel::sql_query("SELECT report_id FROM uplink.reports WHERE state = 'acked'")
            .load::<ReportId>(&mut c)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.report_id)
            .collect()
    };
    assert_eq!(acked, first_ids, "the first export is answered first");
    offline::import_acks(&up, &acks1).await.unwrap();
    assert_eq!(state("acked").await, n1 + n2);
    assert_eq!(state("failed").await, 0);
}

#[derive(diesel::QueryableByName)]
struct ReportId {
    #[diesel(sql_type = BigInt)]
    report_id: i64,
}

/// Batches, status and requeue through the REST routes, as `tally serve` mounts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_list_batches_count_reports_and_requeue_exports() {
    use actix_web::{test, web};
    const OPERATOR: &str = "operator-token-0123456789";
    let (_db, up) = uplink(None, 5000).await;
    let fleet = Fleet::new(4);
    let ev = fleet.collect();
    let total = ev.reports.len() as i64;
    batch::accept(&up, "m-1", ev).await.unwrap();
    let tokens =
        web::Data::new(tally_platform::ApiTokens::parse(&format!("operator:{OPERATOR}")).unwrap());
    let (app, _api) = tally_platform::api_app(Default::default(), tokens)
        .service(tally_platform::api_scope().configure(tally_cssm_uplink::routes))
        .app_data(web::Data::new(up.clone()))
        .split_for_parts();
    let app = test::init_service(app).await;
    let bearer = ("authorization", format!("Bearer {OPERATOR}"));
    let get = |uri: &str| {
        test::TestRequest::get()
            .uri(uri)
            .insert_header(bearer.clone())
            .to_request()
    };
    let json = |resp: actix_web::dev::ServiceResponse| async move {
        let status = resp.status().as_u16();
        let body: serde_json::Value = test::read_body_json(resp).await;
        (status, body)
    };

    let (s, st) = json(test::call_service(&app, get("/api/v1/uplink/status")).await).await;
    assert_eq!(s, 200);
    assert_eq!(st["mode"], "offline");
    assert_eq!(
        st["reports"],
        serde_json::json!({"pending": total, "batched": 0, "exported": 0, "acked": 0, "failed": 0})
    );

    offline::export(&up, None).await.unwrap();
    let (s, st) = json(test::call_service(&app, get("/api/v1/uplink/status")).await).await;
    assert_eq!(s, 200);
    assert_eq!(
        (&st["reports"]["pending"], &st["reports"]["exported"]),
        (&serde_json::json!(0), &serde_json::json!(total))
    );

    let (s, list) = json(test::call_service(&app, get("/api/v1/uplink/batches")).await).await;
    assert_eq!(s, 200);
    let list = list.as_array().unwrap();
    // One exported batch per virtual account.
    let n = count(&up.pool, "SELECT count(*) FROM uplink.batches").await as usize;
    assert!(n >= 1);
    assert_eq!(list.len(), n);
    for b in list {
        assert_eq!(
            (&b["mode"], &b["state"]),
            (&"offline".into(), &"exported".into())
        );
        assert!(b["poll_id"].is_null() && b["error"].is_null());
    }
    let sum = |f: &str| list.iter().map(|b| b[f].as_i64().unwrap()).sum::<i64>();
    assert_eq!((sum("reports"), sum("devices")), (total, 4));
    for (uri, want) in [
        ("/api/v1/uplink/batches?state=exported", n),
        ("/api/v1/uplink/batches?state=new", 0),
        // A state no batch can be in lists nothing; it is not an error.
        ("/api/v1/uplink/batches?state=bogus", 0),
        ("/api/v1/uplink/batches?offset=1", n - 1),
        ("/api/v1/uplink/batches?limit=1", 1),
        ("/api/v1/uplink/batches?limit=1000", n),
    ] {
        let (s, list) = json(test::call_service(&app, get(uri)).await).await;
        assert_eq!(
            (s, list.as_array().map(Vec::len)),
            (200, Some(want)),
            "{uri}"
        );
    }
    for (uri, detail) in [
        (
            "/api/v1/uplink/batches?limit=0",
            "limit: 0 is not between 1 and 1000",
        ),
        (
            "/api/v1/uplink/batches?limit=1001",
            "limit: 1001 is not between 1 and 1000",
        ),
        // Every list route pages the same way: a negative offset is named, not guessed at.
        ("/api/v1/uplink/batches?offset=-5", "offset: -5 is negative"),
    ] {
        let (s, p) = json(test::call_service(&app, get(uri)).await).await;
        assert_eq!(s, 422, "{uri}");
        assert_eq!(p["detail"], detail, "{uri}");
    }

    let req = test::TestRequest::post()
        .uri("/api/v1/uplink/offline/requeue")
        .insert_header(bearer.clone())
        .to_request();
    let (s, r) = json(test::call_service(&app, req).await).await;
    assert_eq!((s, &r["reports"]), (200, &serde_json::json!(total)));
    let (_, list) = json(test::call_service(&app, get("/api/v1/uplink/batches")).await).await;
    for b in list.as_array().unwrap() {
        assert_eq!(
            (&b["state"], &b["error"]),
            (&"failed".into(), &"requeued by operator".into())
        );
    }
    let (_, st) = json(test::call_service(&app, get("/api/v1/uplink/status")).await).await;
    assert_eq!(st["reports"]["pending"], total);
    assert_eq!(
        count(
            &up.pool,
            "SELECT count(*) FROM uplink.reports WHERE batch_id IS NOT NULL"
        )
        .await,
        0
    );
}
