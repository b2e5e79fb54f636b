#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The account directory against the strict CSSM simulator, which, as a real CSSM, addresses
//! accounts by the ids `v2/accounts/search` lists and refuses names: names resolved to ids, a
//! virtual account CSSM does not know failing with the reason and an alert and waiting for the
//! directory, ids given by hand, and the offline manifest carrying ids when known.

use actix_web::{test, web};
use std::time::{Duration, Instant};
use tally_bus::proto;
use tally_cssm_uplink::{Mode, Uplink, batch};
use tally_domain::bundle::UsageBundle;
use tally_testkit::count;

#[macro_use]
mod common;
use common::{Fleet, json};

/// An online uplink against `cssm`; `n` devices' reports accepted and sent until done.
async fn cycle(
    cssm: &common::Cssm,
    n: usize,
) -> (tally_testkit::TestDb, Uplink, proto::ReportsCollected) {
    let (db, up) =
        common::uplink(Some(common::client(cssm)), common::fast(Mode::Online, 5000)).await;
    let ev = Fleet::new(n).collect();
    batch::accept(&up, "m-1", ev.clone()).await.unwrap();
    batch::form_batches(&up, true).await.unwrap();
    drain(&up).await;
    (db, up, ev)
}

/// Works batches until none is new or polling.
async fn drain(up: &Uplink) {
    let t = Instant::now();
    while count(
        &up.pool,
        "SELECT count(*) FROM uplink.batches WHERE state IN ('new', 'polling')",
    )
    .await
        > 0
    {
        assert!(t.elapsed() < Duration::from_secs(30), "batches stuck");
        if !batch::step(up).await.unwrap() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn states(up: &Uplink, va: &str) -> Vec<(String, Option<String>)> {
    #[derive(diesel::QueryableByName)]
    struct S {
        #[diesel(sql_type = diesel::sql_types::Text)]
        state: String,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        error: Option<String>,
    }
    use diesel_async::RunQueryDsl;
    let mut c = up.pool.get().await.unwrap();
    diesel::sql_query("SELECT DISTINCT state, error FROM uplink.reports WHERE virtual_account = $1")
        .bind::<diesel::sql_types::Text, _>(va)
        .load::<S>(&mut c)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.state, s.error))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_sent_as_the_ids_cssm_lists() {
    let cssm = common::cssm(Duration::from_millis(100)).await;
    let (_db, up, ev) = cycle(&cssm, 30).await;
    let total = ev.reports.len();
    for va in ["Campus", "Branch", "Voice"] {
        assert_eq!(states(&up, va).await, vec![("acked".into(), None)], "{va}");
    }
    assert_eq!(cssm.state.stats().reports_accepted as usize, total);
    // One search filled the directory for every batch.
    let app = app!(up);
    let (status, _, body) = call!(app, test::TestRequest::get().uri("/api/v1/uplink/accounts"));
    assert_eq!(status, 200);
    let d = json(&body);
    let ids: Vec<(String, String, String)> = d["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["virtual_account"].as_str().unwrap().to_owned(),
                e["smart_account_id"].as_str().unwrap().to_owned(),
                e["virtual_account_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        ids,
        vec![
            ("Branch".into(), "1001".into(), "2002".into()),
            ("Campus".into(), "1001".into(), "2001".into()),
            ("Voice".into(), "1001".into(), "2003".into()),
        ]
    );
    assert!(
        d["refreshed_at"].is_string() && d["refresh_error"].is_null(),
        "{d}"
    );
    assert_eq!(d["unresolved"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_virtual_account_fails_with_the_reason_and_waits_for_the_directory() {
    // This CSSM has no "Voice" virtual account.
    let cssm = common::cssm_with(Duration::from_millis(100), |c| {
        c.virtual_accounts.retain(|v| v.name != "Voice");
    })
    .await;
    let (_db, up, ev) = cycle(&cssm, 30).await;
    let voice_devices: std::collections::BTreeSet<String> = ev
        .reports
        .iter()
        .filter(|r| r.virtual_account == "Voice")
        .map(|r| r.device_id.clone())
        .collect();
    assert!(!voice_devices.is_empty());

    // The rest completes.
    for va in ["Campus", "Branch"] {
        assert_eq!(states(&up, va).await, vec![("acked".into(), None)], "{va}");
    }
    // Voice fails with a reason naming both accounts, and what CSSM does list.
    let voice = states(&up, "Voice").await;
    assert_eq!(voice.len(), 1, "{voice:?}");
    let (state, error) = &voice[0];
    assert_eq!(state, "failed");
    let error = error.clone().unwrap();
    assert!(
        error.contains("\"acme.example\"")
            && error.contains("\"Voice\"")
            && error.contains("\"Branch\", \"Campus\""),
        "{error}"
    );
    assert_eq!(
        count(
            &up.pool,
            "SELECT count(*) FROM uplink.batches WHERE state = 'failed' AND error_class = 'unknown_account'"
        )
        .await,
        1
    );
    // Nothing with a name in it reached CSSM: only the two known VAs' uploads.
    assert_eq!(cssm.state.stats().requests, 2);
    // The alert's event: kind, both names, every device.
    let problems: Vec<proto::UplinkProblem> = common::events(&up, "uplink.problem").await;
    assert_eq!(problems.len(), 1, "{problems:?}");
    let p = &problems[0];
    assert_eq!(p.kind, "account_unknown");
    assert_eq!(
        (p.smart_account.as_str(), p.virtual_account.as_str()),
        ("acme.example", "Voice")
    );
    assert_eq!(
        p.device_ids
            .iter()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        voice_devices
    );
    let progress: Vec<proto::UploadProgress> = common::events(&up, "uplink.upload.progress").await;
    assert_eq!(
        progress
            .iter()
            .map(|e| e.devices_failed as usize)
            .sum::<usize>(),
        voice_devices.len()
    );

    // Not retried while the directory stays the same.
    for _ in 0..5 {
        batch::form_batches(&up, true).await.unwrap();
        assert!(!batch::step(&up).await.unwrap());
    }
    assert_eq!(cssm.state.stats().requests, 2);

    // The directory shows the pair as unresolved, with why.
    let app = app!(up);
    let (_, _, body) = call!(app, test::TestRequest::get().uri("/api/v1/uplink/accounts"));
    let d = json(&body);
    assert_eq!(d["unresolved"][0]["virtual_account"], "Voice", "{d}");
    assert_eq!(d["unresolved"][0]["batches_waiting"], 1, "{d}");

    // An operator says where Voice devices go: the batch goes again by itself, and completes.
    let (status, _, body) = call!(
        app,
        test::TestRequest::put()
            .uri("/api/v1/uplink/accounts")
            .set_json(serde_json::json!({
                "smart_account": "acme.example", "virtual_account": "Voice",
                "smart_account_id": "1001", "virtual_account_id": "2002",
            }))
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        json(&body)["requeued_reports"].as_u64().unwrap() as usize,
        count(
            &up.pool,
            "SELECT count(*) FROM uplink.reports WHERE virtual_account = 'Voice'"
        )
        .await as usize
    );
    batch::form_batches(&up, true).await.unwrap();
    drain(&up).await;
    assert_eq!(states(&up, "Voice").await, vec![("acked".into(), None)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_ids_are_checked_and_can_be_forgotten() {
    let (_db, up) = common::uplink(None, common::fast(Mode::Offline, 5000)).await;
    let app = app!(up);
    let (status, _, body) = call!(
        app,
        test::TestRequest::put()
            .uri("/api/v1/uplink/accounts")
            .set_json(serde_json::json!({
                "smart_account": "acme.example", "virtual_account": " ",
                "smart_account_id": "10\n01", "virtual_account_id": "2001",
            }))
    );
    assert_eq!(status, 422);
    let fields: Vec<String> = json(&body)["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(fields, ["virtual_account", "smart_account_id"]);
    // Offline: there is no CSSM to ask.
    let (status, _, body) = call!(
        app,
        test::TestRequest::post().uri("/api/v1/uplink/accounts/refresh")
    );
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = call!(
        app,
        test::TestRequest::delete()
            .uri("/api/v1/uplink/accounts?smart_account=a&virtual_account=b")
    );
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_manifest_carries_ids_when_known_and_says_when_it_carries_names() {
    let cssm = common::cssm(Duration::from_millis(0)).await;
    let (_db, up) = common::uplink(None, common::fast(Mode::Offline, 5000)).await;
    let app = app!(up);
    let fleet = Fleet::new(30);
    batch::accept(&up, "m-1", fleet.collect()).await.unwrap();
    let (status, headers, body) = call!(
        app,
        test::TestRequest::post().uri("/api/v1/uplink/offline/export")
    );
    assert_eq!(status, 200);
    assert_eq!(headers.get("x-tally-account-ids").unwrap(), "names");
    let warning = headers.get("warning").unwrap().to_str().unwrap().to_owned();
    assert!(
        warning.contains("acme.example / Campus")
            && warning.contains("PUT /api/v1/uplink/accounts"),
        "{warning}"
    );
    let b = UsageBundle::from_tar_gz(&body).unwrap();
    assert_eq!(b.sa_id, "acme.example");
    // The strict simulator takes names in an offline manifest (docs/interop.md).
    cssm.state.offline_usage(&body).unwrap();
    let (_, _, list) = call!(
        app,
        test::TestRequest::get().uri("/api/v1/uplink/offline/exports")
    );
    assert_eq!(
        json(&list)[0]["names_without_ids"]
            .as_array()
            .unwrap()
            .len(),
        3,
        "{}",
        json(&list)
    );

    for (va, id) in [("Campus", "2001"), ("Branch", "2002"), ("Voice", "2003")] {
        let (status, _, _) = call!(
            app,
            test::TestRequest::put()
                .uri("/api/v1/uplink/accounts")
                .set_json(serde_json::json!({
                    "smart_account": "acme.example", "virtual_account": va,
                    "smart_account_id": "1001", "virtual_account_id": id,
                }))
        );
        assert_eq!(status, 200);
    }
    batch::accept(&up, "m-2", fleet.collect()).await.unwrap();
    let (status, headers, body) = call!(
        app,
        test::TestRequest::post().uri("/api/v1/uplink/offline/export")
    );
    assert_eq!(status, 200);
    assert_eq!(headers.get("x-tally-account-ids").unwrap(), "ids");
    assert!(headers.get("warning").is_none());
    let b = UsageBundle::from_tar_gz(&body).unwrap();
    assert_eq!(b.sa_id, "1001");
    let mut vas: Vec<(String, String)> = b
        .vas
        .iter()
        .map(|v| (v.va_name.clone(), v.va_id.clone()))
        .collect();
    vas.sort();
    assert_eq!(
        vas,
        [("Branch", "2002"), ("Campus", "2001"), ("Voice", "2003")]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    cssm.state.offline_usage(&body).unwrap();
}
