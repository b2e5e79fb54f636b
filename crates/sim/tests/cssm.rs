//! Integration tests over real HTTP on 127.0.0.1 ephemeral ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use serde_json::{Value, json, value::RawValue};
use std::time::Duration;
use tally_domain::{
    Udi,
    ack::parse_ack_document,
    bundle::{AckBundle, DeviceFile, UsageBundle, VaUsage},
    rum::{envelope, inspect_report},
    sign::Signer,
};
use tally_sim::{
    cssm::{CssmConfig, start_cssm},
    fleet::{FleetConfig, FleetState, start_fleet},
};

const API: &str = "/services/api/smart-accounts-and-licensing";

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn cssm_cfg() -> CssmConfig {
    CssmConfig {
        processing_delay: Duration::from_millis(200),
        ..CssmConfig::default()
    }
}

fn fleet(n: usize) -> FleetState {
    FleetState::new(FleetConfig {
        devices: n,
        seed: 7,
        ..FleetConfig::default()
    })
    .unwrap()
}

async fn token(c: &reqwest::Client, base: &str) -> String {
    let r: Value = c
        .post(format!("{base}/oauth2/v1/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "tally"),
            ("client_secret", "tally-sim-secret"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["token_type"], "Bearer");
    assert_eq!(r["expires_in"], 3600);
    r["access_token"].as_str().unwrap().to_owned()
}

/// `reportusage` body for the given devices' (udi, report texts), report texts embedded raw.
fn usage_body(nonce: &str, devices: &[(Udi, Vec<String>)]) -> String {
    let reports: Vec<String> = devices
        .iter()
        .map(|(udi, texts)| {
            format!(
                "{{\"sudi\":{},\"usage\":[{}]}}",
                serde_json::to_string(udi).unwrap(),
                texts.join(",")
            )
        })
        .collect();
    format!(
        "{{\"data\":{{\"timestamp\":{},\"nonce\":\"{nonce}\",\"reports\":[{}]}}}}",
        chrono::Utc::now().timestamp_millis(),
        reports.join(",")
    )
}

async fn post_usage(c: &reqwest::Client, base: &str, tok: &str, body: String) -> Value {
    let r = c
        .post(format!("{base}{API}/v2/devices/reportusage"))
        .bearer_auth(tok)
        .header("X-CSW-SMART-ACCOUNT-ID", "1001")
        .header("X-CSW-VIRTUAL-ACCOUNT-ID", "2001")
        .header("X-CSW-REQUESTING-SYSTEM", "tally")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn poll(c: &reqwest::Client, base: &str, tok: &str, poll_id: &str) -> Value {
    c.post(format!("{base}{API}/v2/accounts/poll"))
        .bearer_auth(tok)
        .json(&json!({"data": {"timestamp": 0, "nonce": "p", "poll_id": poll_id, "action": "acknowledgements"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn stats(c: &reqwest::Client, base: &str) -> Value {
    c.get(format!("{base}/sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_and_bearer_required() {
    let (addr, handle, _st) = start_cssm(cssm_cfg()).await.unwrap();
    let base = format!("http://{addr}");
    let c = client();
    let r = c
        .post(format!("{base}/oauth2/v1/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "tally"),
            ("client_secret", "nope"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "invalid_client");
    // HTTP Basic client credentials.
    let r: Value = c
        .post(format!("{base}/oauth2/v1/token"))
        .basic_auth("tally", Some("tally-sim-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(r["access_token"].is_string());

    let r = c
        .post(format!("{base}{API}/v2/devices/reportusage"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(format!("{base}{API}/v2/accounts/poll"))
        .bearer_auth("made-up")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let tok = token(&c, &base).await;
    let r = c
        .post(format!("{base}{API}/v2/devices/reportusage"))
        .bearer_auth(&tok)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(format!("{base}{API}/v2/accounts/poll"))
        .bearer_auth(&tok)
        .json(&json!({"data": {"poll_id": "nope", "action": "acknowledgements"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Licenses.
    let v: Value = c
        .post(format!("{base}{API}/v1/accounts/acme.example/licenses"))
        .bearer_auth(&tok)
        .json(&json!({"virtualAccounts": ["Campus"], "limit": 3, "offset": 0}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["totalRecords"], 5);
    let lic = v["licenses"].as_array().unwrap();
    assert_eq!(lic.len(), 3);
    assert!(lic.iter().all(|l| l["virtualAccount"] == "Campus"));
    assert!(lic.iter().any(|l| l["license"] == "C9300 DNA Advantage, 3Y"
        && l["licenseDetails"][0]["licenseType"] == "TERM"));
    assert_eq!(
        lic[0]["available"].as_i64().unwrap(),
        lic[0]["quantity"].as_i64().unwrap() - lic[0]["inUse"].as_i64().unwrap()
    );
    let r = c
        .post(format!("{base}{API}/v1/accounts/other.example/licenses"))
        .bearer_auth(&tok)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    handle.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_round_trip_with_fleet() {
    let (caddr, ch, cssm) = start_cssm(cssm_cfg()).await.unwrap();
    let (_faddr, fh, fleet) = start_fleet(FleetConfig {
        devices: 3,
        ..FleetConfig::default()
    })
    .await
    .unwrap();
    let base = format!("http://{caddr}");
    let c = client();
    // Collect from every device over HTTP.
    let mut devices = Vec::new();
    for i in 0..3 {
        let dev = format!("{}/smartlic-service", fleet.device_url(i));
        c.post(format!("{dev}/close-reports"))
            .basic_auth("admin", Some("cisco-sim"))
            .send()
            .await
            .unwrap();
        let body = c
            .get(format!("{dev}/all-reports"))
            .basic_auth("admin", Some("cisco-sim"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        #[derive(serde::Deserialize)]
        struct U<'a> {
            #[serde(borrow)]
            usage: Vec<&'a RawValue>,
        }
        let u: U = serde_json::from_str(&body).unwrap();
        let texts: Vec<String> = u.usage.iter().map(|r| r.get().to_owned()).collect();
        devices.push((fleet.udi(i).unwrap(), texts));
    }
    let total: usize = devices.iter().map(|(_, t)| t.len()).sum();
    let tok = token(&c, &base).await;
    let v = post_usage(&c, &base, &tok, usage_body("n-1", &devices)).await;
    assert_eq!(v["status"], "SUCCESS", "{v}");
    let poll_id = v["data"]["poll_id"].as_str().unwrap().to_owned();

    let p = poll(&c, &base, &tok, &poll_id).await;
    assert_eq!(p["status"], "OK_POLL");
    assert_eq!(p["data"]["poll_id"], poll_id.as_str());
    tokio::time::sleep(Duration::from_millis(250)).await;
    let p = poll(&c, &base, &tok, &poll_id).await;
    assert_eq!(p["status"], "COMPLETE");
    let acks = p["data"]["acknowledgements"].as_array().unwrap();
    assert_eq!(acks.len(), 3, "one ACK per device");
    let cssm_key = Signer::derive(b"tally-sim-cssm", "cssm-ack")
        .unwrap()
        .public_key();
    for (i, a) in acks.iter().enumerate() {
        let sudi: Udi = serde_json::from_value(a["sudi"].clone()).unwrap();
        assert_eq!(sudi, devices[i].0);
        let b64 = a["smart_license"].as_str().unwrap();
        let ack = parse_ack_document(b64).unwrap();
        ack.verify(&cssm_key).unwrap();
        assert_eq!(ack.body.sudi, sudi);
        assert_eq!(ack.body.virtual_account, "Campus");
        assert_eq!(ack.body.smart_account, "acme.example");
        assert_eq!(ack.body.report_ids.len(), devices[i].1.len());
        // Install it on the device, as Tally would.
        let r = c
            .post(format!("{}/smartlic-service/import", fleet.device_url(i)))
            .basic_auth("admin", Some("cisco-sim"))
            .body(b64.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        assert!(fleet.unacked_reports(i).unwrap().is_empty());
    }
    assert_eq!(fleet.summary()["acked_devices"], 3);

    let s = stats(&c, &base).await;
    assert_eq!(s["reports_received"], total);
    assert_eq!(s["reports_accepted"], total);
    assert_eq!(s["duplicates"], 0);
    assert_eq!(s["requests"], 1);
    assert_eq!(s["polls"], 2);

    // Same nonce, same reports: idempotent replay, nothing counted.
    let v = post_usage(&c, &base, &tok, usage_body("n-1", &devices)).await;
    assert_eq!(v["status"], "SUCCESS");
    assert_eq!(v["data"]["poll_id"], poll_id.as_str());
    let s = stats(&c, &base).await;
    assert_eq!(s["reports_received"], total);
    assert_eq!(s["reports_accepted"], total);
    assert_eq!(s["duplicates"], 0);

    // New nonce, one already accepted report: FAILED duplicate, nothing accepted.
    let fresh = {
        fleet.close_reports(0).unwrap();
        fleet.unacked_reports(0).unwrap()
    };
    let mut mixed = fresh.clone();
    mixed.push(devices[0].1[0].clone());
    let v = post_usage(
        &c,
        &base,
        &tok,
        usage_body("n-2", &[(devices[0].0.clone(), mixed)]),
    )
    .await;
    assert_eq!(v["status"], "FAILED");
    assert_eq!(v["message"], "duplicate report");
    let dups = v["data"]["duplicates"].as_array().unwrap();
    assert_eq!(dups.len(), 1);
    assert_eq!(
        dups[0]["report_id"].as_u64().unwrap(),
        inspect_report(&devices[0].1[0]).unwrap().report_id
    );
    let s = stats(&c, &base).await;
    assert_eq!(s["duplicates"], 1);
    assert_eq!(s["reports_accepted"], total);
    // The fresh reports alone are still accepted afterwards.
    let v = post_usage(
        &c,
        &base,
        &tok,
        usage_body("n-3", &[(devices[0].0.clone(), fresh.clone())]),
    )
    .await;
    assert_eq!(v["status"], "SUCCESS", "{v}");
    assert_eq!(cssm.accepted_reports(), total + fresh.len());
    fh.stop(false).await;
    ch.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_payload_fails_signature() {
    let (caddr, ch, _cssm) = start_cssm(cssm_cfg()).await.unwrap();
    let base = format!("http://{caddr}");
    let c = client();
    let f = fleet(2);
    f.close_reports(1).unwrap();
    let texts = f.unacked_reports(1).unwrap();
    // Change the count inside the payload string: still well formed, signature no longer matches.
    let tampered = texts[0].replace("\\\"value\\\":\\\"1\\\"", "\\\"value\\\":\\\"5\\\"");
    assert_ne!(tampered, texts[0]);
    assert_eq!(inspect_report(&tampered).unwrap().count, 5);
    let tok = token(&c, &base).await;
    let v = post_usage(
        &c,
        &base,
        &tok,
        usage_body("t-1", &[(f.udi(1).unwrap(), vec![tampered])]),
    )
    .await;
    assert_eq!(v["status"], "FAILED");
    assert_eq!(v["message"], "signature verification failed");
    assert_eq!(v["data"]["invalid"].as_array().unwrap().len(), 1);
    // Reports listed under another device's sudi are refused too.
    let v = post_usage(
        &c,
        &base,
        &tok,
        usage_body("t-2", &[(f.udi(0).unwrap(), vec![texts[0].clone()])]),
    )
    .await;
    assert_eq!(v["status"], "FAILED");
    let s = stats(&c, &base).await;
    assert_eq!(s["signature_failures"], 2);
    assert_eq!(s["reports_accepted"], 0);
    // Reset.
    c.post(format!("{base}/sim/reset-stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(stats(&c, &base).await["requests"], 0);
    ch.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_bundle_round_trip() {
    let (caddr, ch, _cssm) = start_cssm(cssm_cfg()).await.unwrap();
    let base = format!("http://{caddr}");
    let c = client();
    let f = fleet(4);
    let mut files = Vec::new();
    let mut expected = Vec::new();
    for i in 0..4 {
        f.close_reports(i).unwrap();
        let texts = f.unacked_reports(i).unwrap();
        expected.push((
            format!("dev{i}_x"),
            f.udi(i).unwrap(),
            texts
                .iter()
                .map(|t| inspect_report(t).unwrap().report_id)
                .collect::<Vec<_>>(),
        ));
        files.push(DeviceFile {
            device_id: format!("dev{i}_x"),
            content: envelope(&texts).unwrap(),
        });
    }
    let bundle = UsageBundle {
        created_by: "Tally test".into(),
        sa_name: "acme.example".into(),
        sa_id: "1001".into(),
        timestamp: 1_700_000_000,
        vas: vec![
            VaUsage {
                va_name: "Campus".into(),
                va_id: "2001".into(),
                devices: files[..2].to_vec(),
            },
            VaUsage {
                va_name: "Branch".into(),
                va_id: "2002".into(),
                devices: files[2..].to_vec(),
            },
        ],
    };
    let r = c
        .post(format!("{base}/sim/offline/usage"))
        .body(bundle.to_tar_gz().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/gzip");
    let bytes = r.bytes().await.unwrap();
    let acks = AckBundle::from_tar_gz(&bytes).unwrap();
    assert_eq!(acks.len(), 4);
    let key = Signer::derive(b"tally-sim-cssm", "cssm-ack")
        .unwrap()
        .public_key();
    for (id, udi, ids) in &expected {
        let file = acks.iter().find(|a| &a.device_id == id).unwrap();
        assert!(file.content.starts_with("<smartLicense>"));
        let ack = parse_ack_document(&file.content).unwrap();
        ack.verify(&key).unwrap();
        assert_eq!(&ack.body.sudi, udi);
        assert_eq!(&ack.body.report_ids, ids);
        let i: usize = id[3..4].parse().unwrap();
        f.import_ack(i, &file.content).unwrap();
        assert!(f.unacked_reports(i).unwrap().is_empty());
    }
    let s = stats(&c, &base).await;
    assert_eq!(s["offline_bundles"], 1);
    let n: usize = expected.iter().map(|e| e.2.len()).sum();
    assert_eq!(s["reports_accepted"], n);

    // Re-uploading the same bundle: every report is a duplicate, skipped and counted.
    let r = c
        .post(format!("{base}/sim/offline/usage"))
        .body(bundle.to_tar_gz().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let acks = AckBundle::from_tar_gz(&r.bytes().await.unwrap()).unwrap();
    assert!(acks.iter().all(|a| {
        parse_ack_document(&a.content)
            .unwrap()
            .body
            .report_ids
            .is_empty()
    }));
    let s = stats(&c, &base).await;
    assert_eq!(s["duplicates"], n);
    assert_eq!(s["reports_accepted"], n);

    // A bad bundle is a 400 naming the problem.
    let r = c
        .post(format!("{base}/sim/offline/usage"))
        .body(B64.encode("not a bundle"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("archive"), "{v}");
    ch.stop(false).await;
}
