//! Integration tests over real HTTP on 127.0.0.1 ephemeral ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, value::RawValue};
use std::collections::{HashMap, HashSet};
use tally_domain::{
    ack::{AckBody, build_ack_document},
    rum::inspect_report,
    sign::{Signer, verify_b64},
};
use tally_sim::fleet::{FleetConfig, start_fleet};

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn cfg(devices: usize) -> FleetConfig {
    FleetConfig {
        devices,
        seed: 42,
        ..FleetConfig::default()
    }
}

#[derive(serde::Deserialize)]
struct Usage<'a> {
    #[serde(borrow)]
    usage: Vec<&'a RawValue>,
}

fn texts(body: &str) -> Vec<String> {
    let u: Usage = serde_json::from_str(body).unwrap();
    u.usage.iter().map(|r| r.get().to_owned()).collect()
}

fn ack_for(body: &AckBody) -> String {
    let signer = Signer::derive(b"tally-sim-cssm", "cssm-ack").unwrap();
    build_ack_document(body, &signer, "cssm-sim-1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_api_requires_basic_auth() {
    let (_addr, handle, st) = start_fleet(cfg(3)).await.unwrap();
    let c = client();
    let url = format!("{}/smartlic-service/all-reports", st.device_url(1));
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(&url)
        .basic_auth("admin", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(format!(
            "{}/smartlic-service/close-reports",
            st.device_url(1)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(&url)
        .basic_auth("admin", Some("cisco-sim"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!(
            "{}/d/99/smartlic-service/all-reports",
            st.base_url()
        ))
        .basic_auth("admin", Some("cisco-sim"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    handle.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_list_reports_and_import_ack() {
    let (_addr, handle, st) = start_fleet(cfg(5)).await.unwrap();
    let c = client();
    let dev = 2;
    let base = format!("{}/smartlic-service", st.device_url(dev));
    let udi = st.udi(dev).unwrap();
    let info = st.info(dev).unwrap();
    let expected = 1 + usize::from(info.dna_tier.is_some());

    let r: Value = c
        .post(format!("{base}/close-reports"))
        .basic_auth("admin", Some("cisco-sim"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["status"], "SUCCESS");
    assert_eq!(r["closed"], expected);

    let get = |path: &'static str| {
        let c = c.clone();
        let url = format!("{base}{path}");
        async move {
            c.get(url)
                .basic_auth("admin", Some("cisco-sim"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let body1 = get("/all-reports").await;
    let body2 = get("/all-reports").await;
    assert_eq!(body1, body2, "report texts must be byte-identical");
    let usage: Usage = serde_json::from_str(&body1).unwrap();
    assert_eq!(usage.usage.len(), expected);
    let key = Signer::derive(b"tally-sim-devices", &udi.to_string())
        .unwrap()
        .public_key();
    let mut ids = Vec::new();
    for raw in &usage.usage {
        let info = inspect_report(raw.get()).unwrap();
        assert_eq!(info.udi, udi);
        assert_eq!(info.count, 1);
        let v: Value = serde_json::from_str(raw.get()).unwrap();
        let payload = v["payload"].as_str().unwrap();
        assert_eq!(v["signature"]["signing_type"], "builtin");
        assert!(
            v["signature"]["key"]
                .as_str()
                .unwrap()
                .starts_with("regid.")
        );
        let p: Value = serde_json::from_str(payload).unwrap();
        assert_eq!(p["version"], "2.0");
        assert!(
            p["meta"]["entitlement_tag"]
                .as_str()
                .unwrap()
                .starts_with("regid.")
        );
        verify_b64(
            &key,
            payload.as_bytes(),
            v["signature"]["value"].as_str().unwrap(),
        )
        .unwrap();
        ids.push(info.report_id);
    }
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len());

    // /days lists them too; /list shows them closed.
    let days = texts(&get("/days/7").await);
    assert_eq!(days.len(), expected);
    let days = texts(&get("/days").await);
    assert_eq!(days.len(), expected);
    let list: Value = serde_json::from_str(&get("/list").await).unwrap();
    assert_eq!(list["usage_list"].as_array().unwrap().len(), expected);
    assert_eq!(list["usage_list"][0]["state"], "closed");

    // A second close gives new ids.
    c.post(format!("{base}/close-reports"))
        .basic_auth("admin", Some("cisco-sim"))
        .send()
        .await
        .unwrap();
    let body3 = get("/all-reports").await;
    let usage3: Usage = serde_json::from_str(&body3).unwrap();
    assert_eq!(usage3.usage.len(), 2 * expected);
    let ids3: HashSet<u64> = usage3
        .usage
        .iter()
        .map(|r| inspect_report(r.get()).unwrap().report_id)
        .collect();
    assert_eq!(ids3.len(), 2 * expected);

    // Import a valid ACK for the first batch (base64 form).
    use base64::Engine;
    let body = AckBody {
        version: "1.0".into(),
        sudi: udi.clone(),
        report_ids: ids.clone(),
        ack_time: chrono::Utc::now().timestamp(),
        smart_account: "acme.example".into(),
        virtual_account: info.virtual_account.clone(),
        status: "ACK".into(),
    };
    let doc = ack_for(&body);
    let r = c
        .post(format!("{base}/import"))
        .basic_auth("admin", Some("cisco-sim"))
        .body(base64::engine::general_purpose::STANDARD.encode(&doc))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r: Value = r.json().await.unwrap();
    assert_eq!(r["status"], "SUCCESS");

    let status: Value = c
        .get(format!("{}/sim/status", st.device_url(dev)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["last_ack_valid"], true);
    assert_eq!(status["acked_reports"], expected);
    assert_eq!(status["unacked_reports"], expected);
    assert_eq!(status["imports"], 1);
    assert_eq!(status["reports_generated"], 2 * expected);
    let last: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(status["last_ack_time"].clone()).unwrap();
    let next: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(status["next_ack_deadline"].clone()).unwrap();
    assert_eq!(next - last, chrono::Duration::days(90));
    assert!((chrono::Utc::now() - last).num_seconds().abs() < 10);

    let after = texts(&get("/all-reports").await);
    assert_eq!(after.len(), expected);
    for raw in &after {
        assert!(!ids.contains(&inspect_report(raw).unwrap().report_id));
    }
    let list: Value = serde_json::from_str(&get("/list").await).unwrap();
    let states: HashMap<u64, String> = list["usage_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["report_id"].as_u64().unwrap(),
                e["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for id in &ids {
        assert_eq!(states[id], "acknowledged");
    }

    // XML in a JSON wrapper works too.
    let mut body2 = body.clone();
    body2.report_ids = ids3.iter().copied().collect();
    let r = c
        .post(format!("{base}/import"))
        .basic_auth("admin", Some("cisco-sim"))
        .json(&serde_json::json!({"ack": ack_for(&body2)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(texts(&get("/all-reports").await).is_empty());

    let summary: Value = c
        .get(format!("{}/sim/summary", st.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(summary["devices"], 5);
    assert_eq!(summary["acked_devices"], 1);
    assert_eq!(summary["imports"], 2);
    assert_eq!(summary["unacked_reports"], 0);
    handle.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_tampered_and_foreign_acks() {
    let (_addr, handle, st) = start_fleet(cfg(4)).await.unwrap();
    let c = client();
    let base = format!("{}/smartlic-service", st.device_url(0));
    let other = st.udi(1).unwrap();
    let body = AckBody {
        version: "1.0".into(),
        sudi: st.udi(0).unwrap(),
        report_ids: vec![1],
        ack_time: 1_700_000_000,
        smart_account: "acme.example".into(),
        virtual_account: "Campus".into(),
        status: "ACK".into(),
    };
    let tampered = ack_for(&body).replace("Campus", "Campu5");
    let r = c
        .post(format!("{base}/import"))
        .basic_auth("admin", Some("cisco-sim"))
        .body(tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "FAILURE");

    let mut foreign = body.clone();
    foreign.sudi = other.clone();
    let r = c
        .post(format!("{base}/import"))
        .basic_auth("admin", Some("cisco-sim"))
        .body(ack_for(&foreign))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains(&other.udi_serial_number),
        "{v}"
    );

    // Signed by another key.
    let rogue = Signer::derive(b"rogue", "cssm-ack").unwrap();
    let r = c
        .post(format!("{base}/import"))
        .basic_auth("admin", Some("cisco-sim"))
        .body(build_ack_document(&body, &rogue, "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(format!("{base}/import"))
        .basic_auth("admin", Some("cisco-sim"))
        .body("garbage!")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let status = st.status(0).unwrap();
    assert_eq!(status["last_ack_valid"], false);
    assert_eq!(status["imports"], 0);
    let summary = st.summary();
    assert_eq!(summary["import_failures"], 4);
    handle.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection() {
    let (_addr, handle, st) = start_fleet(cfg(2)).await.unwrap();
    let c = client();
    let base = st.device_url(0);
    c.post(format!("{base}/smartlic-service/close-reports"))
        .basic_auth("admin", Some("cisco-sim"))
        .send()
        .await
        .unwrap();
    let set = |kind: &'static str| {
        let c = c.clone();
        let url = format!("{base}/sim/fault");
        async move {
            let r = c
                .post(url)
                .json(&serde_json::json!({ "kind": kind }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    let all = || {
        c.get(format!("{base}/smartlic-service/all-reports"))
            .basic_auth("admin", Some("cisco-sim"))
            .send()
    };
    set("http_500").await;
    assert_eq!(all().await.unwrap().status(), 500);
    set("malformed_envelope").await;
    let text = all().await.unwrap().text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err());
    set("missing_signature").await;
    let v: Value = all().await.unwrap().json().await.unwrap();
    let first = v["usage"][0].to_string();
    assert!(v["usage"][0].get("payload").is_some());
    assert!(inspect_report(&first).is_err());
    set("none").await;
    let v = texts(&all().await.unwrap().text().await.unwrap());
    inspect_report(&v[0]).unwrap();
    handle.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_list_is_a_realistic_unique_mix() {
    let (_addr, handle, st) = start_fleet(cfg(5000)).await.unwrap();
    let c = client();
    let devices: Vec<Value> = c
        .get(format!("{}/sim/devices", st.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(devices.len(), 5000);
    let udis: HashSet<(String, String)> = devices
        .iter()
        .map(|d| {
            (
                d["udi_pid"].as_str().unwrap().to_owned(),
                d["serial"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(udis.len(), 5000);
    let serials: HashSet<&str> = devices
        .iter()
        .map(|d| d["serial"].as_str().unwrap())
        .collect();
    assert_eq!(serials.len(), 5000);
    assert!(
        serials
            .iter()
            .all(|s| s.starts_with("FCW") && s.len() == 11)
    );
    let count = |prefix: &str| {
        devices
            .iter()
            .filter(|d| d["model"].as_str().unwrap().starts_with(prefix))
            .count() as f64
            / 5000.0
    };
    let c9300 = count("C9300");
    let c9200 = count("C9200");
    let c9800 = count("C9800");
    let routers = count("ISR") + count("C8200");
    assert!((0.40..0.50).contains(&c9300), "{c9300}");
    assert!((0.20..0.30).contains(&c9200), "{c9200}");
    assert!((0.07..0.13).contains(&c9800), "{c9800}");
    assert!((0.15..0.25).contains(&routers), "{routers}");
    let cube = devices.iter().filter(|d| d["is_cube"] == true).count() as f64 / 5000.0;
    assert!((0.07..0.13).contains(&cube), "{cube}");
    assert!(
        devices
            .iter()
            .filter(|d| d["is_cube"] == true)
            .all(|d| d["virtual_account"] == "Voice")
    );
    assert!(devices.iter().any(|d| d["dna_tier"].is_null()));
    for tier in ["dna-essentials", "dna-advantage", "dna-premier"] {
        assert!(devices.iter().any(|d| d["dna_tier"] == tier));
    }
    for v in ["17.3.4", "17.6.5", "17.9.4a", "17.12.3"] {
        assert!(devices.iter().any(|d| d["software_version"] == v));
    }
    assert_eq!(devices[7]["base_url"], st.device_url(7));
    assert_eq!(devices[7]["username"], "admin");

    let csv = c
        .get(format!("{}/sim/devices?format=csv", st.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "index,hostname,udi_pid,serial,model,software_version,base_url,site,smart_account,virtual_account,network_license,dna_tier,is_cube,username,password"
    );
    assert_eq!(lines.count(), 5000);

    // Deterministic: same seed, same fleet.
    let (_a2, h2, st2) = start_fleet(cfg(5000)).await.unwrap();
    for i in [0, 1, 4999] {
        assert_eq!(st.udi(i).unwrap(), st2.udi(i).unwrap());
    }
    h2.stop(false).await;
    handle.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_100k_devices() {
    let (_addr, handle, st) = start_fleet(cfg(100_000)).await.unwrap();
    let c = client();
    let dev = 99_999;
    let r = c
        .post(format!(
            "{}/smartlic-service/close-reports",
            st.device_url(dev)
        ))
        .basic_auth("admin", Some("cisco-sim"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!st.unacked_reports(dev).unwrap().is_empty());
    handle.stop(false).await;
}
