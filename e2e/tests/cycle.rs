//! Whole license cycles driven through the REST API against the real binary: a simulated fleet
//! of 1,000 devices, a simulated CSSM, and `tally serve` on its own database and NATS namespace.
//! Needs PostgreSQL, NATS >= 2.10 with JetStream (`TALLY_TEST_NATS_URL`) and `cargo build -p
//! tally`; see e2e/README.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::time::{Duration, Instant};
use tally_e2e::{
    Cssm, Fleet, Online, Tally, Uplink, assert_all_confirmed, assert_clean_cycle, collection_done,
    random_hex,
};

const DEVICES: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_cycle_1000_devices() {
    let t0 = Instant::now();
    let Online {
        fleet,
        cssm,
        mut tally,
    } = Online::start(DEVICES, 300).await;

    let t_cycle = Instant::now();
    let id = tally.start_cycle().await;
    let cycle = tally
        .wait_cycle_complete(&id, Duration::from_secs(180))
        .await;
    eprintln!(
        "[e2e] online cycle complete in {:.1} s (total {:.1} s)",
        t_cycle.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    assert_clean_cycle(DEVICES, &cycle, &fleet.summary().await, &cssm.stats().await);
    assert_all_confirmed(&tally, DEVICES).await;

    // What the README promises next to the API: health, metrics, the spec and the Swagger UI,
    // none of which needs a token.
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{}{path}", tally.base)).send();
    assert!(get("/healthz").await.unwrap().status().is_success());
    assert!(get("/readyz").await.unwrap().status().is_success());
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(&format!(
            "tally_events_total{{kind=\"acks_imported\"}} {DEVICES}"
        )),
        "{metrics}"
    );
    let spec: serde_json::Value = get("/openapi.json").await.unwrap().json().await.unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    assert!(spec["paths"]["/api/v1/cycles/{id}"].is_object());
    let docs = get("/docs/").await.unwrap();
    assert!(docs.status().is_success());
    assert!(docs.text().await.unwrap().contains("swagger"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_cycle_ends_in_same_state() {
    let t0 = Instant::now();
    let tag = random_hex();
    let fleet = Fleet::start(&tag, DEVICES).await;
    // Only the offline endpoint of the CSSM simulator is used: it plays the CSSM portal.
    let cssm = Cssm::start(&tag, 300, &fleet).await;
    let mut tally = Tally::start(&tag, Uplink::Offline).await;
    assert_eq!(tally.get("/uplink/status").await["mode"], "offline");
    tally.import_fleet(&fleet).await;

    let t_cycle = Instant::now();
    let id = tally.start_cycle().await;

    // Collection first, then wait until every stored report has reached the uplink.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        tally.proc.assert_running();
        let c = tally.cycle(&id).await;
        assert_eq!(c["state"], "running", "offline cycle ended early: {c:#}");
        if collection_done(&c) {
            let up = tally.get("/uplink/status").await;
            let col = tally.get("/collector/status").await;
            let stored = col["reports_stored"].as_i64().unwrap_or(0);
            if stored > 0 && up["reports"]["pending"].as_i64() == Some(stored) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "collection / uplink hand-off not done in 180 s: {c:#}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let bundle = tally
        .post_bytes("/uplink/offline/export", "application/json", Vec::new())
        .await;
    let up = tally.get("/uplink/status").await;
    assert_eq!(
        up["reports"]["pending"], 0,
        "export left reports pending: {up}"
    );
    let acks = cssm.offline_usage(bundle).await;
    let imported: Value = serde_json::from_slice(
        &tally
            .post_bytes("/uplink/offline/acks", "application/gzip", acks)
            .await,
    )
    .expect("ACK import result is JSON");
    eprintln!("[e2e] offline ACK import: {imported}");
    assert_eq!(imported["devices_acked"], DEVICES, "{imported}");

    let cycle = tally
        .wait_cycle_complete(&id, Duration::from_secs(180))
        .await;
    eprintln!(
        "[e2e] offline cycle complete in {:.1} s (total {:.1} s)",
        t_cycle.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    assert_clean_cycle(DEVICES, &cycle, &fleet.summary().await, &cssm.stats().await);
    assert_all_confirmed(&tally, DEVICES).await;
    let up = tally.get("/uplink/status").await;
    assert_eq!(
        up["reports"]["acked"], cycle["collection"]["reports_stored"],
        "uplink {up}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_account_cssm_does_not_know_fails_alone_with_the_reason_and_an_alert() {
    let tag = random_hex();
    let fleet = Fleet::start(&tag, DEVICES).await;
    // This CSSM holds Campus and Branch; the fleet's Voice devices name a VA it does not know.
    let cssm = Cssm::start_with(
        &tag,
        300,
        &fleet,
        &["--only-virtual-accounts", "Campus,Branch"],
    )
    .await;
    let mut tally = Tally::start(&tag, Uplink::Online(&cssm)).await;
    tally.import_fleet(&fleet).await;
    let voice: usize = fleet
        .inventory_rows()
        .await
        .iter()
        .filter(|d| d["virtual_account"] == "Voice")
        .count();
    assert!(voice > 0 && voice < DEVICES, "{voice} Voice devices");

    let id = tally.start_cycle().await;
    let deadline = Instant::now() + Duration::from_secs(180);
    let cycle = loop {
        tally.proc.assert_running();
        let c = tally.cycle(&id).await;
        if c["state"] != "running" {
            break c;
        }
        assert!(Instant::now() < deadline, "cycle still running: {c:#}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("[e2e] cycle with an unknown VA: {cycle:#}");
    assert_eq!(cycle["state"], "complete_with_errors", "{cycle:#}");
    assert_eq!(
        cycle["ack"]["devices_imported"],
        (DEVICES - voice) as u64,
        "{cycle:#}"
    );
    assert_eq!(cycle["upload"]["devices_failed"], voice as u64, "{cycle:#}");
    let failures = tally
        .get(&format!("/cycles/{id}/failures?limit=1000"))
        .await;
    let upload: Vec<&Value> = failures
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["stage"] == "upload")
        .collect();
    assert_eq!(upload.len(), voice, "{failures:#}");
    assert!(
        upload.iter().all(|f| {
            let r = f["reason"].as_str().unwrap_or("");
            r.contains("\"acme.example\"") && r.contains("\"Voice\"")
        }),
        "{failures:#}"
    );
    // No name reached CSSM, and nothing was refused: the Voice batch was never sent.
    let stats = cssm.stats().await;
    assert_eq!(stats["duplicates"], 0, "{stats}");
    // One alert for the pair.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alerts = tally.get("/alerts").await;
        let ours: Vec<&Value> = alerts
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["kind"] == "upload_failed" && a["threshold"] == "account_unknown")
            .collect();
        if let [a] = ours.as_slice() {
            assert!(a["message"].as_str().unwrap().contains("Voice"), "{a}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no account_unknown alert: {alerts:#}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let dir = tally.get("/uplink/accounts").await;
    assert_eq!(dir["unresolved"][0]["virtual_account"], "Voice", "{dir:#}");
}

/// Polls the cycle until `pred` holds on (cycle, uplink batches); `None` when the cycle left
/// `running` first.
async fn wait_running_until(
    tally: &mut Tally,
    id: &str,
    within: Duration,
    pred: impl Fn(&Value, &Value) -> bool,
) -> Option<Value> {
    let deadline = Instant::now() + within;
    loop {
        tally.proc.assert_running();
        let c = tally.cycle(id).await;
        if c["state"] != "running" {
            return None;
        }
        let batches = tally.get("/uplink/batches").await;
        if pred(&c, &batches) {
            return Some(c);
        }
        assert!(
            Instant::now() < deadline,
            "condition not met in {within:?}: {c:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_cycle_loses_nothing_and_uploads_nothing_twice() {
    let t0 = Instant::now();
    let Online {
        fleet,
        cssm,
        mut tally,
    } = Online::start(DEVICES, 1500).await;

    let t_cycle = Instant::now();
    let id = tally.start_cycle().await;

    // Kill 1: mid-collection.
    let c = wait_running_until(&mut tally, &id, Duration::from_secs(120), |c, _| {
        c["collection"]["devices_ok"].as_i64().unwrap_or(0) > 0
            || c["collection"]["reports_stored"].as_i64().unwrap_or(0) > 0
    })
    .await
    .expect("the cycle finished before collection was observed");
    tally.kill9().await;
    eprintln!(
        "[e2e] kill -9 #1 at {:.1} s: collection {}",
        t_cycle.elapsed().as_secs_f64(),
        c["collection"]
    );
    tally.restart().await;

    // Kill 2: once an upload batch exists or CSSM has accepted one (poll pending).
    let c2 = wait_running_until(&mut tally, &id, Duration::from_secs(180), |c, batches| {
        c["upload"]["batches"].as_i64().unwrap_or(0) > 0
            || batches
                .as_array()
                .is_some_and(|b| b.iter().any(|b| b["state"] == "polling"))
    })
    .await;
    match c2 {
        Some(c) => {
            tally.kill9().await;
            eprintln!(
                "[e2e] kill -9 #2 at {:.1} s: upload {}",
                t_cycle.elapsed().as_secs_f64(),
                c["upload"]
            );
            tally.restart().await;
        }
        None => eprintln!("[e2e] cycle left running before an upload batch was seen: no kill #2"),
    }

    let cycle = tally
        .wait_cycle_complete(&id, Duration::from_secs(240))
        .await;
    eprintln!(
        "[e2e] cycle complete in {:.1} s after two kills (total {:.1} s): {cycle}",
        t_cycle.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );

    // The truth is on the devices and at CSSM (cycle counters are per-stage event counts).
    let summary = fleet.summary().await;
    let stats = cssm.stats().await;
    let collector = tally.get("/collector/status").await;
    let uplink = tally.get("/uplink/status").await;
    let ctx = format!(
        "cycle {cycle:#}\nfleet {summary:#}\nCSSM {stats:#}\ncollector {collector:#}\nuplink {uplink:#}"
    );
    assert_eq!(summary["acked_devices"], DEVICES, "nothing lost\n{ctx}");
    assert_eq!(summary["unacked_reports"], 0, "nothing lost\n{ctx}");
    assert_eq!(stats["duplicates"], 0, "nothing uploaded twice\n{ctx}");
    assert_eq!(stats["signature_failures"], 0, "{ctx}");
    // Every report Tally stored reached CSSM exactly once and is acknowledged.
    assert_eq!(
        stats["reports_accepted"], collector["reports_stored"],
        "{ctx}"
    );
    assert_eq!(
        uplink["reports"]["acked"], collector["reports_stored"],
        "{ctx}"
    );
    for s in ["pending", "batched", "exported", "failed"] {
        assert_eq!(uplink["reports"][s], 0, "uplink reports {s}\n{ctx}");
    }
    // The cycle counts devices, however many ACKs a device received after the crashes.
    assert_eq!(cycle["state"], "complete", "{ctx}");
    assert_eq!(cycle["ack"]["devices_imported"], DEVICES, "{ctx}");
    assert_eq!(cycle["ack"]["devices_failed"], 0, "{ctx}");
}
