//! Integration tests over real HTTP on 127.0.0.1 ephemeral ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use reqwest::Method;
use serde_json::{Value, value::RawValue};
use std::collections::{HashMap, HashSet};
use tally_domain::{
    rum::inspect_report,
    sign::{Signer, verify_b64},
};
use tally_sim::ack::{AckBody, build_ack_document};
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

async fn get_json<T: serde::de::DeserializeOwned>(
    c: &reqwest::Client,
    url: impl reqwest::IntoUrl,
) -> T {
    c.get(url).send().await.unwrap().json().await.unwrap()
}

async fn get_text(c: &reqwest::Client, url: impl reqwest::IntoUrl) -> String {
    c.get(url).send().await.unwrap().text().await.unwrap()
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

    let status: Value = get_json(&c, format!("{}/sim/status", st.device_url(dev))).await;
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

    let summary: Value = get_json(&c, format!("{}/sim/summary", st.base_url())).await;
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

async fn set_fault(c: &reqwest::Client, base: &str, kind: &str) {
    let r = c
        .post(format!("{base}/sim/fault"))
        .json(&serde_json::json!({ "kind": kind }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
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
    let all = || {
        c.get(format!("{base}/smartlic-service/all-reports"))
            .basic_auth("admin", Some("cisco-sim"))
            .send()
    };
    set_fault(&c, &base, "http_500").await;
    assert_eq!(all().await.unwrap().status(), 500);
    set_fault(&c, &base, "malformed_envelope").await;
    let text = all().await.unwrap().text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err());
    set_fault(&c, &base, "missing_signature").await;
    let v: Value = all().await.unwrap().json().await.unwrap();
    let first = v["usage"][0].to_string();
    assert!(v["usage"][0].get("payload").is_some());
    assert!(inspect_report(&first).is_err());
    set_fault(&c, &base, "none").await;
    let v = texts(&all().await.unwrap().text().await.unwrap());
    inspect_report(&v[0]).unwrap();
    handle.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_list_is_a_realistic_unique_mix() {
    let (_addr, handle, st) = start_fleet(cfg(5000)).await.unwrap();
    let c = client();
    let devices: Vec<Value> = get_json(&c, format!("{}/sim/devices", st.base_url())).await;
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
    // Devices boot only into pairings the license YANG allows.
    assert!(
        devices
            .iter()
            .any(|d| d["network_license"] == "network-essentials")
    );
    assert!(
        devices
            .iter()
            .all(|d| d["network_license"] == "network-advantage"
                || d["dna_tier"].is_null()
                || d["dna_tier"] == "dna-essentials")
    );
    for tier in ["dna-essentials", "dna-advantage", "dna-premier"] {
        assert!(devices.iter().any(|d| d["dna_tier"] == tier));
    }
    for v in ["17.3.4", "17.6.5", "17.9.4a", "17.12.3"] {
        assert!(devices.iter().any(|d| d["software_version"] == v));
    }
    // Voice gateways: CUBE, SRST and CME routers, and is_cube exactly for CUBE.
    for role in ["cube", "srst", "cme"] {
        assert!(devices.iter().any(|d| d["voice_role"] == role), "{role}");
    }
    assert!(
        devices
            .iter()
            .all(|d| (d["voice_role"] == "cube") == (d["is_cube"] == true))
    );
    assert_eq!(devices[7]["base_url"], st.device_url(7));
    assert_eq!(devices[7]["username"], "admin");

    let csv = get_text(&c, format!("{}/sim/devices?format=csv", st.base_url())).await;
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "index,hostname,udi_pid,serial,model,software_version,base_url,site,smart_account,virtual_account,network_license,dna_tier,is_cube,username,password,configured_network_license,configured_dna_tier,pending_reload,voice_role"
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

const LEVEL_PATH: &str = "restconf/data/Cisco-IOS-XE-native:native/license/boot/level";
const YANG: &str = "application/yang-data+json";

fn level_body(network: &str, addon: Option<&str>) -> String {
    let case = match addon {
        Some(a) => serde_json::json!({ "addon": a }),
        None => serde_json::json!({}),
    };
    serde_json::json!({ "Cisco-IOS-XE-native:level": { network: case } }).to_string()
}

/// PUT or PATCH of the boot level.
async fn configure(
    c: &reqwest::Client,
    base: &str,
    method: Method,
    network: &str,
    addon: Option<&str>,
) -> reqwest::Response {
    send_level(c, base, method, level_body(network, addon)).await
}

async fn send_level(
    c: &reqwest::Client,
    base: &str,
    method: Method,
    body: String,
) -> reqwest::Response {
    c.request(method, format!("{base}/{LEVEL_PATH}"))
        .basic_auth("admin", Some("cisco-sim"))
        .header("content-type", YANG)
        .header("accept", YANG)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn get_level(c: &reqwest::Client, base: &str) -> Value {
    let r = c
        .get(format!("{base}/{LEVEL_PATH}"))
        .basic_auth("admin", Some("cisco-sim"))
        .header("accept", YANG)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], YANG);
    r.json().await.unwrap()
}

/// Closes device `base`'s reports; returns the entitlement tags of all its unacknowledged ones,
/// oldest first.
async fn close_and_list_tags(c: &reqwest::Client, base: &str) -> Vec<String> {
    let auth = |r: reqwest::RequestBuilder| r.basic_auth("admin", Some("cisco-sim"));
    let r = auth(c.post(format!("{base}/smartlic-service/close-reports")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = auth(c.get(format!("{base}/smartlic-service/all-reports")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    texts(&body)
        .iter()
        .map(|t| inspect_report(t).unwrap().entitlement_tag)
        .collect()
}

/// `POST <url>` (a reload hook) with an optional JSON body: status and answer.
async fn reload(c: &reqwest::Client, url: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = c.post(url);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn restconf_message(v: &Value) -> String {
    v["ietf-restconf:errors"]["error"][0]["error-message"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// First switch (its tags name the family) whose level is not the one we will configure.
fn switch_not_at(st: &tally_sim::FleetState, network: &str, dna: &str) -> usize {
    (0..st.len())
        .find(|i| {
            let d = st.info(*i).unwrap();
            d.model.starts_with("C9300")
                && (d.network_license != network || d.dna_tier.as_deref() != Some(dna))
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_level_takes_effect_at_reload() {
    let (_addr, handle, st) = start_fleet(cfg(20)).await.unwrap();
    let c = client();
    let dev = switch_not_at(&st, "network-advantage", "dna-premier");
    let base = st.device_url(dev);
    let before = st.info(dev).unwrap();

    // GET shows the level the device boots with.
    let v = get_level(&c, &base).await;
    let case = &v["Cisco-IOS-XE-native:level"][&before.network_license];
    assert!(case.is_object(), "{v}");
    assert_eq!(
        case.get("addon").and_then(Value::as_str),
        before.dna_tier.as_deref()
    );

    // PUT configures; GET reads it back.
    let r = configure(
        &c,
        &base,
        Method::PUT,
        "network-advantage",
        Some("dna-premier"),
    )
    .await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        get_level(&c, &base).await,
        serde_json::json!({"Cisco-IOS-XE-native:level": {"network-advantage": {"addon": "dna-premier"}}})
    );

    // Until the reload, the device runs (and reports) the old level.
    let info = st.info(dev).unwrap();
    assert_eq!(info.network_license, before.network_license);
    assert_eq!(info.dna_tier, before.dna_tier);
    assert_eq!(info.configured_network_license, "network-advantage");
    assert_eq!(info.configured_dna_tier.as_deref(), Some("dna-premier"));
    assert!(info.pending_reload);
    assert_eq!(st.summary()["pending_reload"], 1);
    let tags = close_and_list_tags(&c, &base).await;
    assert!(tags.iter().all(|t| !t.contains("DNA_Premier")), "{tags:?}");
    let status: Value = get_json(&c, format!("{base}/sim/status")).await;
    assert_eq!(status["network_license"], before.network_license.as_str());
    assert_eq!(status["configured_dna_tier"], "dna-premier");
    assert_eq!(status["pending_reload"], true);
    let csv = get_text(&c, format!("{}/sim/devices?format=csv", st.base_url())).await;
    let row = csv.lines().nth(dev + 1).unwrap();
    assert!(
        row.contains(",network-advantage,dna-premier,true,"),
        "{row}"
    );

    // Reload: the new level runs, and the next report proves it.
    let (_, r) = reload(&c, &format!("{base}/sim/reload"), None).await;
    assert_eq!(r["reloaded"], 1);
    assert_eq!(r["changed"], 1);
    let info = st.info(dev).unwrap();
    assert_eq!(info.network_license, "network-advantage");
    assert_eq!(info.dna_tier.as_deref(), Some("dna-premier"));
    assert!(!info.pending_reload);
    assert_eq!(st.summary()["pending_reload"], 0);
    let all = texts(
        &c.get(format!("{base}/smartlic-service/all-reports"))
            .basic_auth("admin", Some("cisco-sim"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    let old = all.len();
    let tags = close_and_list_tags(&c, &base).await;
    let new_tags = &tags[old..];
    assert_eq!(new_tags.len(), 2, "{new_tags:?}");
    assert!(
        new_tags[0].contains("C9300_Network_Advantage"),
        "{new_tags:?}"
    );
    assert!(new_tags[1].contains("C9300_DNA_Premier"), "{new_tags:?}");

    // A second reload changes nothing.
    let (_, r) = reload(&c, &format!("{base}/sim/reload"), None).await;
    assert_eq!(r["changed"], 0);
    handle.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_level_is_validated_like_a_device() {
    let (_addr, handle, st) = start_fleet(cfg(3)).await.unwrap();
    let c = client();
    let base = st.device_url(1);
    let before = get_level(&c, &base).await;

    for (body, needle) in [
        (
            level_body("network-advantage", Some("dna-gold")),
            "dna-gold",
        ),
        (level_body("network-premium", None), "network-premium"),
        (
            level_body("network-essentials", Some("dna-advantage")),
            "not allowed with network-essentials",
        ),
        (
            level_body("network-essentials", Some("dna-premier")),
            "not allowed with network-essentials",
        ),
    ] {
        let r = send_level(&c, &base, Method::PUT, body.clone()).await;
        assert_eq!(r.status(), 400, "{body}");
        assert_eq!(r.headers()["content-type"], YANG);
        let v: Value = r.json().await.unwrap();
        let e = &v["ietf-restconf:errors"]["error"][0];
        assert_eq!(e["error-type"], "application");
        assert_eq!(e["error-tag"], "invalid-value");
        assert!(restconf_message(&v).contains(needle), "{v}");
    }
    assert_eq!(
        get_level(&c, &base).await,
        before,
        "refused PUTs change nothing"
    );

    // Wrong credentials and a non-RESTCONF media type.
    let r = c
        .put(format!("{base}/{LEVEL_PATH}"))
        .basic_auth("admin", Some("wrong"))
        .header("content-type", YANG)
        .body(level_body("network-advantage", None))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c.get(format!("{base}/{LEVEL_PATH}")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .put(format!("{base}/{LEVEL_PATH}"))
        .basic_auth("admin", Some("cisco-sim"))
        .header("content-type", "text/plain")
        .body(level_body("network-advantage", None))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    // PATCH merges: same network case without addon keeps the addon; another case drops it.
    use tally_domain::{DnaTier::DnaAdvantage, NetworkLicense::*};
    for (method, network, addon, want) in [
        (
            Method::PUT,
            "network-advantage",
            Some("dna-advantage"),
            (NetworkAdvantage, Some(DnaAdvantage)),
        ),
        (
            Method::PATCH,
            "network-advantage",
            None,
            (NetworkAdvantage, Some(DnaAdvantage)),
        ),
        (
            Method::PATCH,
            "network-essentials",
            None,
            (NetworkEssentials, None),
        ),
    ] {
        let r = configure(&c, &base, method, network, addon).await;
        assert_eq!(r.status(), 204);
        assert_eq!(st.configured_level(1).unwrap(), want);
    }
    handle.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_level_faults() {
    let (_addr, handle, st) = start_fleet(cfg(2)).await.unwrap();
    let c = client();
    let base = st.device_url(0);
    let before = st.configured_level(0).unwrap();
    set_fault(&c, &base, "boot_level_refused").await;
    let r = configure(
        &c,
        &base,
        Method::PUT,
        "network-advantage",
        Some("dna-essentials"),
    )
    .await;
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["ietf-restconf:errors"]["error"][0]["error-tag"],
        "lock-denied"
    );
    assert!(restconf_message(&v).contains("locked"), "{v}");
    assert_eq!(st.configured_level(0).unwrap(), before);
    get_level(&c, &base).await;

    set_fault(&c, &base, "http_500").await;
    let r = c
        .get(format!("{base}/{LEVEL_PATH}"))
        .basic_auth("admin", Some("cisco-sim"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["ietf-restconf:errors"]["error"][0]["error-tag"],
        "operation-failed"
    );
    let r = configure(&c, &base, Method::PUT, "network-advantage", None).await;
    assert_eq!(r.status(), 500);
    handle.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_reload_by_site_or_indexes() {
    let (_addr, handle, st) = start_fleet(cfg(40)).await.unwrap();
    let c = client();
    let target = |i: usize| {
        let d = st.info(i).unwrap();
        if d.dna_tier.as_deref() == Some("dna-essentials") {
            ("network-advantage", "dna-advantage")
        } else {
            ("network-advantage", "dna-essentials")
        }
    };
    for i in 0..st.len() {
        let (n, a) = target(i);
        let r = configure(&c, &st.device_url(i), Method::PUT, n, Some(a)).await;
        assert_eq!(r.status(), 204);
    }
    assert_eq!(st.summary()["pending_reload"], 40);
    let url = format!("{}/sim/reload", st.base_url());
    let reload = |body: Option<Value>| reload(&c, &url, body);
    let (s, v) = reload(Some(serde_json::json!({"indexes": [3, 5]}))).await;
    assert_eq!(
        (s, v["reloaded"].clone(), v["changed"].clone()),
        (200, 2.into(), 2.into())
    );
    assert!(!st.info(3).unwrap().pending_reload && st.info(4).unwrap().pending_reload);

    let hq: Vec<usize> = (0..st.len())
        .filter(|i| st.info(*i).unwrap().site == "hq")
        .collect();
    assert!(!hq.is_empty() && hq.len() < 40);
    let (_, v) = reload(Some(serde_json::json!({"site": "hq"}))).await;
    assert_eq!(v["reloaded"], hq.len());
    for i in &hq {
        let d = st.info(*i).unwrap();
        assert!(!d.pending_reload);
        assert_eq!(d.network_license, "network-advantage");
        assert_eq!(d.dna_tier, d.configured_dna_tier);
    }

    let (s, _) = reload(Some(serde_json::json!({"indexes": [99]}))).await;
    assert_eq!(s, 404);
    let (s, _) = reload(Some(serde_json::json!({"site": "hq", "indexes": [1]}))).await;
    assert_eq!(s, 400);

    let (_, v) = reload(None).await;
    assert_eq!(v["reloaded"], 40);
    assert_eq!(st.summary()["pending_reload"], 0);
    assert!((0..40).all(|i| !st.info(i).unwrap().pending_reload));
    handle.stop(false).await;
}
