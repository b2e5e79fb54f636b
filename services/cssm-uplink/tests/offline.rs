#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The offline exchange through the REST routes, as an operator at an air-gapped site drives it:
//! ACK bundles that are partly wrong, ACKs in a format Tally has never seen, lost downloads,
//! requeueing one export, and reports that contain `]]>`.

use actix_web::{test, web};
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use std::sync::Arc;
use std::time::Duration;
use tally_bus::proto;
use tally_cssm_uplink::{Config, Mode, Uplink, batch};
use tally_domain::bundle::{AckBundle, DeviceFile, UsageBundle};
use tally_domain::rum;
use tally_sim::CssmState;
use tally_testkit::{TestDb, count};
use uuid::Uuid;

#[macro_use]
mod common;
use common::{Fleet, json};

async fn cssm() -> (actix_web::dev::ServerHandle, Arc<CssmState>) {
    let c = common::cssm(Duration::from_millis(0)).await;
    (c.handle, c.state)
}

async fn offline_uplink() -> (TestDb, Uplink) {
    common::uplink(
        None,
        Config {
            mode: Mode::Offline,
            ..Default::default()
        },
    )
    .await
}

async fn acks_received(up: &Uplink) -> Vec<proto::DeviceAck> {
    common::events::<proto::AcksReceived>(up, "uplink.acks.received")
        .await
        .into_iter()
        .flat_map(|e| e.acks)
        .collect()
}

async fn state_of(up: &Uplink, device: Uuid) -> Vec<String> {
    #[derive(diesel::QueryableByName)]
    struct S {
        #[diesel(sql_type = Text)]
        state: String,
    }
    let mut c = up.pool.get().await.unwrap();
    diesel::sql_query(format!(
        "SELECT DISTINCT state FROM uplink.reports WHERE device_id = '{device}'"
    ))
    .load::<S>(&mut c)
    .await
    .unwrap()
    .into_iter()
    .map(|s| s.state)
    .collect()
}

/// The ACK files the simulated CSSM answers a usage bundle with.
fn cssm_acks(cssm: &CssmState, usage: &[u8]) -> Vec<DeviceFile> {
    AckBundle::from_tar_gz(&cssm.offline_usage(usage).unwrap()).unwrap()
}

fn bundle_of(files: Vec<DeviceFile>) -> Vec<u8> {
    AckBundle {
        timestamp: 1_800_000_000,
        vas: vec![("va".into(), files)],
    }
    .to_tar_gz()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_with_an_unknown_device_and_an_unreadable_file_imports_the_rest() {
    let (_h, cssm) = cssm().await;
    let (_db, up) = offline_uplink().await;
    let fleet = Fleet::new(4);
    batch::accept(&up, "m-1", fleet.collect()).await.unwrap();
    let app = app!(up);
    let (s, _, usage) = call!(
        app,
        test::TestRequest::post().uri("/api/v1/uplink/offline/export")
    );
    assert_eq!(s, 200);
    let mut files = cssm_acks(&cssm, &usage);
    assert_eq!(files.len(), 4);
    // Device 3's ACK arrives mangled; a device Tally never exported shows up too.
    let broken = fleet.ids[3].to_string();
    for f in &mut files {
        if f.device_id == broken {
            f.content = "<smartLicense><smartLicenseRumAck>cut off".into();
        }
    }
    let stranger = Uuid::now_v7();
    let mut extra = files
        .iter()
        .find(|f| f.device_id != broken)
        .unwrap()
        .clone();
    extra.device_id = stranger.to_string();
    files.push(extra);

    let (s, _, body) = call!(
        app,
        test::TestRequest::post()
            .uri("/api/v1/uplink/offline/acks")
            .insert_header(("content-type", "application/gzip"))
            .set_payload(bundle_of(files))
    );
    let r = json(&body);
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (r["files"].as_u64(), r["devices_acked"].as_u64()),
        (Some(5), Some(3))
    );
    assert_eq!(r["not_imported"], 2);
    let outcome = |id: &str| {
        r["outcomes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["file"].as_str().unwrap().contains(id))
            .unwrap_or_else(|| panic!("no outcome for {id}: {r}"))
            .clone()
    };
    let o = outcome(&stranger.to_string());
    assert_eq!(o["outcome"], "unknown-device", "{o}");
    let o = outcome(&broken);
    assert_eq!(o["outcome"], "unreadable", "{o}");
    assert!(o["detail"].is_string(), "{o}");
    for id in &fleet.ids[..3] {
        assert_eq!(outcome(&id.to_string())["outcome"], "imported");
        assert_eq!(state_of(&up, *id).await, ["acked"]);
    }
    // The mangled device keeps waiting for a good file; its export stays listed.
    assert_eq!(state_of(&up, fleet.ids[3]).await, ["exported"]);
    assert_eq!(acks_received(&up).await.len(), 3);
    let (_, _, list) = call!(
        app,
        test::TestRequest::get().uri("/api/v1/uplink/offline/exports")
    );
    let list = json(&list);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    // The same bundle again: the three are named as already imported, nothing is recorded twice.
    let files = cssm_acks(&cssm, &usage);
    let (s, _, body) = call!(
        app,
        test::TestRequest::post()
            .uri("/api/v1/uplink/offline/acks")
            .set_payload(bundle_of(files))
    );
    let r = json(&body);
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["devices_acked"], 1, "{r}");
    let already = r["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["outcome"] == "already-imported")
        .count();
    assert_eq!(already, 3, "{r}");
    assert_eq!(count(&up.pool, "SELECT count(*) FROM uplink.acks").await, 4);
    let (_, _, list) = call!(
        app,
        test::TestRequest::get().uri("/api/v1/uplink/offline/exports")
    );
    assert_eq!(
        json(&list),
        serde_json::json!([]),
        "an answered export is dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_in_a_format_tally_has_never_seen_is_imported_and_delivered() {
    let (_db, up) = offline_uplink().await;
    let fleet = Fleet::new(3);
    let ev = fleet.collect();
    batch::accept(&up, "m-1", ev.clone()).await.unwrap();
    let app = app!(up);
    let (s, _, _) = call!(
        app,
        test::TestRequest::post().uri("/api/v1/uplink/offline/export")
    );
    assert_eq!(s, 200);
    // CSSM's real ACK content is unpublished: anything inside <smartLicense> goes to the device.
    let foreign = |i: usize| {
        format!(
            "<?xml version=\"1.0\"?>\n<smartLicense><smartLicenseRumAck><data>b3BhcXVlLXt7aX19</data><status>OK</status><seq>{i}</seq></smartLicenseRumAck><smartLicensePolicy><policy>30/60/60</policy></smartLicensePolicy></smartLicense>\n"
        )
    };
    let mut files: Vec<DeviceFile> = (0..2)
        .map(|i| DeviceFile {
            device_id: fleet.ids[i].to_string(),
            content: foreign(i),
        })
        .collect();
    // The third file's name carries no Tally id (another collector's naming); the UDI in it
    // routes it.
    let udi = fleet.fleet.udi(2).unwrap();
    let third = format!(
        "<smartLicense><smartLicenseRumAck><data>eA==</data><device>PID:{},SN:{}</device></smartLicenseRumAck></smartLicense>",
        udi.udi_pid, udi.udi_serial_number
    );
    files.push(DeviceFile {
        device_id: "7".into(),
        content: third.clone(),
    });
    let (s, _, body) = call!(
        app,
        test::TestRequest::post()
            .uri("/api/v1/uplink/offline/acks")
            .set_payload(bundle_of(files))
    );
    let r = json(&body);
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (r["devices_acked"].as_u64(), r["not_imported"].as_u64()),
        (Some(3), Some(0)),
        "{r}"
    );
    let acks = acks_received(&up).await;
    assert_eq!(acks.len(), 3);
    for a in &acks {
        let i = fleet
            .ids
            .iter()
            .position(|d| d.to_string() == a.device_id)
            .unwrap();
        // Delivered untouched, with the device's own report ids.
        assert_eq!(a.ack, if i == 2 { third.clone() } else { foreign(i) });
        let mut want: Vec<u64> = ev
            .reports
            .iter()
            .filter(|r| r.device_id == a.device_id)
            .map(|r| r.report_id)
            .collect();
        want.sort_unstable();
        let mut got = a.report_ids.clone();
        got.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(a.cycle_id, fleet.cycle.to_string());
    }
    assert_eq!(
        count(
            &up.pool,
            "SELECT count(*) FROM uplink.reports WHERE state = 'acked'"
        )
        .await as usize,
        ev.reports.len()
    );
    assert_eq!(
        count(
            &up.pool,
            "SELECT count(*) FROM uplink.batches WHERE state = 'complete'"
        )
        .await,
        count(&up.pool, "SELECT count(*) FROM uplink.batches").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_export_is_downloaded_again_by_id() {
    let (_h, cssm) = cssm().await;
    let (_db, up) = offline_uplink().await;
    let fleet = Fleet::new(3);
    let ev = fleet.collect();
    batch::accept(&up, "m-1", ev.clone()).await.unwrap();
    let app = app!(up);
    let (s, headers, first) = call!(
        app,
        test::TestRequest::post().uri("/api/v1/uplink/offline/export")
    );
    assert_eq!(s, 200);
    let id = headers
        .get("x-tally-export-id")
        .expect("the export answer names the export")
        .to_str()
        .unwrap()
        .to_owned();
    let disposition = headers.get("content-disposition").unwrap().clone();
    // The download was lost. The export is listed, and its bytes come back the same.
    let (s, _, list) = call!(
        app,
        test::TestRequest::get().uri("/api/v1/uplink/offline/exports")
    );
    assert_eq!(s, 200);
    let list = json(&list);
    assert_eq!(list[0]["id"], id, "{list}");
    assert_eq!(list[0]["reports"].as_u64(), Some(ev.reports.len() as u64));
    assert_eq!(
        list[0]["reports_waiting"].as_u64(),
        Some(ev.reports.len() as u64)
    );
    assert_eq!(list[0]["devices"], 3);
    let (s, h, again) = call!(
        app,
        test::TestRequest::get().uri(&format!("/api/v1/uplink/offline/exports/{id}"))
    );
    assert_eq!(s, 200);
    assert_eq!(again, first, "byte for byte");
    assert_eq!(h.get("content-disposition"), Some(&disposition));
    assert_eq!(h.get("content-type").unwrap(), "application/gzip");
    let (s, _, _) = call!(
        app,
        test::TestRequest::get().uri(&format!(
            "/api/v1/uplink/offline/exports/{}",
            Uuid::now_v7()
        ))
    );
    assert_eq!(s, 404);
    // The bundle downloaded again is answered and imported; the export is then dropped.
    let files = cssm_acks(&cssm, &again);
    let (s, _, body) = call!(
        app,
        test::TestRequest::post()
            .uri("/api/v1/uplink/offline/acks")
            .set_payload(bundle_of(files))
    );
    assert_eq!((s, json(&body)["devices_acked"].as_u64()), (200, Some(3)));
    let (_, _, list) = call!(
        app,
        test::TestRequest::get().uri("/api/v1/uplink/offline/exports")
    );
    assert_eq!(json(&list), serde_json::json!([]));
    let (s, _, _) = call!(
        app,
        test::TestRequest::get().uri(&format!("/api/v1/uplink/offline/exports/{id}"))
    );
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_of_one_export_leaves_the_others() {
    let (_db, up) = offline_uplink().await;
    let fleet = Fleet::new(2);
    let first = fleet.collect();
    batch::accept(&up, "m-1", first.clone()).await.unwrap();
    let app = app!(up);
    let (s, h1, _) = call!(
        app,
        test::TestRequest::post().uri("/api/v1/uplink/offline/export")
    );
    assert_eq!(s, 200);
    let second = fleet.collect();
    let n2 = second.reports.len() - first.reports.len();
    batch::accept(&up, "m-2", second).await.unwrap();
    let (s, h2, _) = call!(
        app,
        test::TestRequest::post().uri("/api/v1/uplink/offline/export")
    );
    assert_eq!(s, 200);
    let id = |h: &actix_web::http::header::HeaderMap| {
        h.get("x-tally-export-id")
            .expect("export id")
            .to_str()
            .unwrap()
            .to_owned()
    };
    let (e1, e2) = (id(&h1), id(&h2));
    assert_ne!(e1, e2);
    let (_, _, list) = call!(
        app,
        test::TestRequest::get().uri("/api/v1/uplink/offline/exports")
    );
    assert_eq!(json(&list).as_array().map(Vec::len), Some(2));

    let (s, _, body) = call!(
        app,
        test::TestRequest::post().uri(&format!("/api/v1/uplink/offline/exports/{e1}/requeue"))
    );
    assert_eq!(s, 200);
    assert_eq!(
        json(&body)["reports"].as_u64(),
        Some(first.reports.len() as u64)
    );
    let n = |q: &'static str| {
        let up = &up;
        async move { count(&up.pool, q).await as usize }
    };
    assert_eq!(
        n("SELECT count(*) FROM uplink.reports WHERE state = 'pending'").await,
        first.reports.len()
    );
    assert_eq!(
        n("SELECT count(*) FROM uplink.reports WHERE state = 'exported'").await,
        n2
    );
    let (_, _, list) = call!(
        app,
        test::TestRequest::get().uri("/api/v1/uplink/offline/exports")
    );
    let list = json(&list);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["id"], e2);
    // The second export still downloads; the first is gone.
    let (s, _, _) = call!(
        app,
        test::TestRequest::get().uri(&format!("/api/v1/uplink/offline/exports/{e2}"))
    );
    assert_eq!(s, 200);
    let (s, _, _) = call!(
        app,
        test::TestRequest::post().uri(&format!("/api/v1/uplink/offline/exports/{e1}/requeue"))
    );
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_containing_a_cdata_terminator_is_exported_byte_exact() {
    let (_db, up) = offline_uplink().await;
    let fleet = Fleet::new(2);
    let mut ev = fleet.collect();
    // A device wrote "]]>" into a report (any text field of the report object may carry it).
    let tricky = &mut ev.reports[0];
    let text = String::from_utf8(tricky.body.clone()).unwrap();
    let text = text.replacen("{", "{\"note\":\"a]]>b]]]]>\",", 1);
    tricky.body = text.clone().into_bytes();
    let tricky_device = tricky.device_id.clone();
    let bodies: Vec<Vec<u8>> = ev.reports.iter().map(|r| r.body.clone()).collect();
    batch::accept(&up, "m-1", ev.clone()).await.unwrap();
    let app = app!(up);
    let (s, _, usage) = call!(
        app,
        test::TestRequest::post().uri("/api/v1/uplink/offline/export")
    );
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&usage));
    let bundle = UsageBundle::from_tar_gz(&usage).unwrap();
    let mut exported: Vec<Vec<u8>> = Vec::new();
    for va in &bundle.vas {
        for d in &va.devices {
            let reports = rum::parse_envelope(&d.content).unwrap();
            if d.device_id == tricky_device {
                assert!(reports.contains(&text), "the report comes back whole");
            }
            exported.extend(reports.into_iter().map(String::into_bytes));
        }
    }
    let mut want = bodies;
    want.sort();
    exported.sort();
    assert_eq!(exported, want, "every report byte for byte");
}
