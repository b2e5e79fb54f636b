//! Integration tests over real HTTP on 127.0.0.1 ephemeral ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use serde_json::{Value, json, value::RawValue};
use std::time::Duration;
use tally_domain::{
    Udi,
    bundle::{AckBundle, DeviceFile, UsageBundle, VaUsage},
    rum::{envelope, inspect_report},
    sign::Signer,
};
use tally_sim::{
    ack::parse_ack_document,
    cssm::{CssmConfig, start_cssm},
    fleet::{FleetConfig, FleetState, start_fleet},
    yang_state::SimPolicy,
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
        .header(
            "X-CSW-REQUESTING-SYSTEM",
            r#"{"udi_pid":"TALLY","udi_serial_number":"SIMTEST"}"#,
        )
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
    let poll_id = v["poll_id"].as_str().unwrap().to_owned();

    let p = poll(&c, &base, &tok, &poll_id).await;
    assert_eq!(p["status"], "OK_POLL");
    assert_eq!(p["poll_id"], poll_id.as_str());
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
    assert_eq!(v["poll_id"], poll_id.as_str());
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

/// Licenses API page of every pool (one VA or all), as `(virtualAccount, license) -> entry`.
async fn licenses_api(
    c: &reqwest::Client,
    base: &str,
    tok: &str,
) -> std::collections::HashMap<(String, String), Value> {
    let v: Value = c
        .post(format!("{base}{API}/v1/accounts/acme.example/licenses"))
        .bearer_auth(tok)
        .json(&json!({"limit": 1000}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["licenses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let key = (
                l["virtualAccount"].as_str().unwrap().to_owned(),
                l["license"].as_str().unwrap().to_owned(),
            );
            (key, l.clone())
        })
        .collect()
}

#[test]
fn fleet_pools_count_the_fleets_tiers_per_va() {
    use std::collections::HashMap;
    use tally_domain::rules::{Level, Rules};
    let cfg = FleetConfig {
        devices: 3000,
        seed: 7,
        ..FleetConfig::default()
    };
    let rules = Rules::defaults();
    let pools = tally_sim::fleet_pools(&cfg, &rules, 20);

    // What the fleet itself lists, per (VA, license for model and tier).
    let fleet = FleetState::new(cfg.clone()).unwrap();
    let mut want: HashMap<(String, String), i64> = HashMap::new();
    let mut per_va_devices: HashMap<String, i64> = HashMap::new();
    let mut per_va_dna: HashMap<String, i64> = HashMap::new();
    for i in 0..fleet.len() {
        let d = fleet.info(i).unwrap();
        *per_va_devices.entry(d.virtual_account.clone()).or_default() += 1;
        let mut levels = vec![Level::Network(d.network_license.parse().unwrap())];
        if let Some(t) = &d.dna_tier {
            levels.push(Level::Dna(t.parse().unwrap()));
            *per_va_dna.entry(d.virtual_account.clone()).or_default() += 1;
        }
        for level in levels {
            let lic = rules.license_for(&d.model, level).unwrap();
            *want
                .entry((d.virtual_account.clone(), lic.name.clone()))
                .or_default() += 1;
        }
    }
    let got: HashMap<(String, String), i64> = pools
        .iter()
        .map(|p| ((p.virtual_account.clone(), p.license.clone()), p.in_use))
        .collect();
    assert_eq!(got.len(), pools.len(), "one pool per (VA, license)");
    assert_eq!(got, want);

    // Per VA: every device holds one network license, and DNA ones only those with a tier.
    for va in ["Campus", "Branch", "Voice"] {
        let sum = |dna: bool| -> i64 {
            pools
                .iter()
                .filter(|p| p.virtual_account == va)
                .filter(|p| rules.license_named(&p.license).unwrap().1.level.is_dna() == dna)
                .map(|p| p.in_use)
                .sum()
        };
        assert!(per_va_devices[va] > 0, "{va}");
        assert_eq!(sum(false), per_va_devices[va], "{va}");
        assert_eq!(sum(true), per_va_dna[va], "{va}");
    }
    for p in &pools {
        assert_eq!(p.quantity, p.in_use + p.in_use * 20 / 100 + 5, "{p:?}");
        let dna = rules.license_named(&p.license).unwrap().1.level.is_dna();
        assert_eq!(p.license_type, if dna { "TERM" } else { "PERPETUAL" });
        assert_eq!(p.end_date.is_some(), dna, "{p:?}");
        assert_eq!(p.subscription_id.is_some(), dna, "{p:?}");
    }
    // Deterministic, and the headroom applies.
    assert_eq!(tally_sim::fleet_pools(&cfg, &rules, 20), pools);
    let bare = tally_sim::fleet_pools(&cfg, &rules, 0);
    assert!(bare.iter().all(|p| p.quantity == p.in_use + 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn license_pools_can_be_changed_for_tests() {
    let fleet_cfg = FleetConfig {
        devices: 200,
        seed: 7,
        ..FleetConfig::default()
    };
    let pools = tally_sim::fleet_pools(&fleet_cfg, &tally_domain::rules::Rules::defaults(), 20);
    let (addr, handle, st) = start_cssm(CssmConfig {
        pools: pools.clone(),
        ..cssm_cfg()
    })
    .await
    .unwrap();
    let base = format!("http://{addr}");
    let c = client();
    let tok = token(&c, &base).await;
    let sim_pools = |c: reqwest::Client, base: String| async move {
        c.get(format!("{base}/sim/licenses"))
            .send()
            .await
            .unwrap()
            .json::<Vec<tally_sim::LicensePool>>()
            .await
            .unwrap()
    };
    assert_eq!(sim_pools(c.clone(), base.clone()).await, pools);
    let api = licenses_api(&c, &base, &tok).await;
    assert_eq!(api.len(), pools.len());
    let p0 = &pools[0];
    let key = (p0.virtual_account.clone(), p0.license.clone());
    assert_eq!(api[&key]["inUse"], p0.in_use);

    // Overcommit one pool: the licenses API shows it.
    let r = c
        .patch(format!("{base}/sim/licenses"))
        .json(
            &json!([{"virtual_account": p0.virtual_account, "license": p0.license,
                        "in_use": p0.quantity + 3}]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let api = licenses_api(&c, &base, &tok).await;
    assert_eq!(api[&key]["inUse"], p0.quantity + 3);
    assert_eq!(api[&key]["quantity"], p0.quantity);
    assert_eq!(api[&key]["available"], -3);
    assert_eq!(api[&key]["status"], "Out of Compliance");
    assert_eq!(st.pools()[0].in_use, p0.quantity + 3);

    // Drift in quantity too; an unknown pool changes nothing at all.
    let r = c
        .patch(format!("{base}/sim/licenses"))
        .json(&json!([
            {"virtual_account": p0.virtual_account, "license": p0.license, "quantity": 1},
            {"virtual_account": "Campus", "license": "No Such License"}
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("No Such License"));
    assert_eq!(
        licenses_api(&c, &base, &tok).await[&key]["quantity"],
        p0.quantity
    );
    let r = c
        .patch(format!("{base}/sim/licenses"))
        .json(
            &json!([{"virtual_account": p0.virtual_account, "license": p0.license,
                        "quantity": -1}]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Replace every pool.
    let one = vec![tally_sim::LicensePool {
        quantity: 2,
        in_use: 1,
        ..p0.clone()
    }];
    let r = c
        .put(format!("{base}/sim/licenses"))
        .json(&one)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let api = licenses_api(&c, &base, &tok).await;
    assert_eq!(api.len(), 1);
    assert_eq!(api[&key]["quantity"], 2);
    assert_eq!(sim_pools(c.clone(), base.clone()).await, one);
    let r = c
        .put(format!("{base}/sim/licenses"))
        .json(&[one[0].clone(), one[0].clone()])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    handle.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_are_searched_by_id_and_names_in_the_headers_are_refused() {
    let (addr, handle, _st) = start_cssm(cssm_cfg()).await.unwrap();
    let base = format!("http://{addr}");
    let c = client();
    let tok = token(&c, &base).await;
    let search = |q: &'static str| {
        c.get(format!("{base}{API}/v2/accounts/search{q}"))
            .bearer_auth(&tok)
            .send()
    };
    let v: Value = search("").await.unwrap().json().await.unwrap();
    assert_eq!(v["status"], "COMPLETE");
    assert_eq!(v["accounts"][0]["account_id"], "1001");
    assert_eq!(v["accounts"][0]["domain"], "acme.example");
    let vas: Vec<(&str, &str)> = v["accounts"][0]["virtual_accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap(),
                v["virtual_account_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        vas,
        [("Campus", "2001"), ("Branch", "2002"), ("Voice", "2003")]
    );
    // Past the last account, an empty page.
    let v: Value = search("?limit=1000&offset=1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["accounts"], json!([]));
    // No token, no listing.
    let r = c
        .get(format!("{base}{API}/v2/accounts/search"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let fleet = fleet(1);
    fleet.close_reports(0).unwrap();
    let devices = vec![(fleet.udi(0).unwrap(), fleet.unacked_reports(0).unwrap())];
    let send = |sa: &'static str, va: &'static str, rs: &'static str| {
        c.post(format!("{base}{API}/v2/devices/reportusage"))
            .bearer_auth(&tok)
            .header("X-CSW-SMART-ACCOUNT-ID", sa)
            .header("X-CSW-VIRTUAL-ACCOUNT-ID", va)
            .header("X-CSW-REQUESTING-SYSTEM", rs)
            .header("content-type", "application/json")
            .body(usage_body("n-1", &devices))
            .send()
    };
    const UDI: &str = r#"{"udi_pid":"TALLY","udi_serial_number":"X1"}"#;
    for (sa, va, rs, code) in [
        ("acme.example", "2001", UDI, "INVALID_ACCOUNT_ID"),
        ("1001", "Campus", UDI, "INVALID_ACCOUNT_ID"),
        ("1001", "2009", UDI, "INVALID_ACCOUNT_ID"),
        ("1001", "2001", "Tally 0.1.0", "INVALID_REQUESTING_SYSTEM"),
    ] {
        let r = send(sa, va, rs).await.unwrap();
        assert_eq!(r.status(), 400, "{sa} {va} {rs}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            (v["status"].as_str(), v["message_code"].as_str()),
            (Some("FAILED"), Some(code)),
            "{v}"
        );
    }
    assert_eq!(stats(&c, &base).await["reports_received"], 0);
    let r = send("1001", "2001", UDI).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["poll_id"].is_string() && v.get("data").is_none(), "{v}");
    handle.stop(true).await;
}

/// The one ACK document the offline exchange gives for device `i`'s closed reports.
async fn offline_ack(c: &reqwest::Client, base: &str, f: &FleetState, i: usize) -> String {
    f.close_reports(i).unwrap();
    let texts = f.unacked_reports(i).unwrap();
    let bundle = UsageBundle {
        created_by: "Tally test".into(),
        sa_name: "acme.example".into(),
        sa_id: "1001".into(),
        timestamp: 1_700_000_000,
        vas: vec![VaUsage {
            va_name: "Campus".into(),
            va_id: "2001".into(),
            devices: vec![DeviceFile {
                device_id: format!("dev{i}_x"),
                content: envelope(&texts).unwrap(),
            }],
        }],
    };
    let r = c
        .post(format!("{base}/sim/offline/usage"))
        .body(bundle.to_tar_gz().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let acks = AckBundle::from_tar_gz(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(acks.len(), 1);
    acks[0].content.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_carry_the_configured_policy() {
    let (caddr, ch, cssm) = start_cssm(CssmConfig {
        ack_policy: Some(SimPolicy::Custom306060),
        ..cssm_cfg()
    })
    .await
    .unwrap();
    let base = format!("http://{caddr}");
    let c = client();
    let f = fleet(2);
    let key = Signer::derive(b"tally-sim-cssm", "cssm-ack")
        .unwrap()
        .public_key();

    let doc = offline_ack(&c, &base, &f, 0).await;
    assert!(doc.contains("<smartLicensePolicy><data>"), "{doc}");
    let ack = parse_ack_document(&doc).unwrap();
    ack.verify(&key).unwrap();
    let p = ack.policy.unwrap();
    p.verify(&key).unwrap();
    assert_eq!(p.body.policy, SimPolicy::Custom306060);
    assert_eq!(p.body.sudi, f.udi(0).unwrap());
    // The device takes it with the ACK.
    f.import_ack(0, &doc).unwrap();
    let state = f.licensing_state(0).unwrap();
    assert_eq!(
        state["state"]["state-info"]["policy"]["policy-type"], "policy-type-custom",
        "{state}"
    );

    // The knob: GET shows it, PUT changes it for the ACKs issued from then on.
    let v: Value = c
        .get(format!("{base}/sim/ack-policy"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"policy": "custom_30_60_60"}));
    for (body, want) in [
        (json!({"policy": "enforced"}), Some(SimPolicy::Enforced)),
        (json!({"policy": null}), None),
    ] {
        let r = c
            .put(format!("{base}/sim/ack-policy"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(cssm.ack_policy(), want);
        let doc = offline_ack(&c, &base, &f, 1).await;
        let ack = parse_ack_document(&doc).unwrap();
        assert_eq!(ack.policy.map(|p| p.body.policy), want);
        assert_eq!(doc.contains("smartLicensePolicy"), want.is_some());
    }
    let r = c
        .put(format!("{base}/sim/ack-policy"))
        .json(&json!({"policy": "30/60/60"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    ch.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_carry_no_policy_by_default() {
    let (caddr, ch, cssm) = start_cssm(cssm_cfg()).await.unwrap();
    assert_eq!(cssm.ack_policy(), None);
    let c = client();
    let f = fleet(1);
    let doc = offline_ack(&c, &format!("http://{caddr}"), &f, 0).await;
    assert!(!doc.contains("smartLicensePolicy"), "{doc}");
    assert_eq!(parse_ack_document(&doc).unwrap().policy, None);
    ch.stop(false).await;
}
