//! The fleet's `cisco-smart-license` operational state over RESTCONF: per-device policies, the
//! last ACK received moving only when an ACK was verified and applied, devices without RESTCONF,
//! and a device that answers SUCCESS to an import it does not apply.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use tally_domain::sign::Signer;
use tally_sim::ack::{AckBody, build_ack_document_with_policy};
use tally_sim::fleet::{FleetConfig, FleetState, start_fleet};
use tally_sim::yang_state::SimPolicy;

const STATE: &str = "restconf/data/cisco-smart-license:licensing/state";

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn fleet(n: usize) -> (actix_web::dev::ServerHandle, std::sync::Arc<FleetState>) {
    let (_, h, st) = start_fleet(FleetConfig {
        devices: n,
        seed: 7,
        ..FleetConfig::default()
    })
    .await
    .unwrap();
    (h, st)
}

async fn get(c: &reqwest::Client, url: &str) -> (u16, String, String) {
    let r = c
        .get(url)
        .basic_auth("admin", Some("cisco-sim"))
        .header("accept", "application/yang-data+json")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ct, r.text().await.unwrap())
}

async fn state(c: &reqwest::Client, st: &FleetState, i: usize) -> Value {
    let (status, ct, body) = get(c, &format!("{}/{STATE}", st.device_url(i))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ct, "application/yang-data+json");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["cisco-smart-license:state"].clone()
}

fn time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .map(|s| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc))
}

async fn knobs(c: &reqwest::Client, st: &FleetState, i: usize, body: Value) {
    let r = c
        .post(format!("{}/sim/knobs", st.device_url(i)))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// Closes the device's reports and imports a valid ACK for them; returns the HTTP status.
async fn close_and_ack(c: &reqwest::Client, st: &FleetState, i: usize, tamper: bool) -> u16 {
    let doc = ack_doc(st, i, tamper, None);
    import(c, st, i, doc).await
}

async fn import(c: &reqwest::Client, st: &FleetState, i: usize, doc: String) -> u16 {
    c.post(format!("{}/smartlic-service/import", st.device_url(i)))
        .basic_auth("admin", Some("cisco-sim"))
        .body(doc)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Closes the device's reports and builds an ACK for them (signed by CSSM unless `tamper`),
/// with `policy` sent along.
fn ack_doc(st: &FleetState, i: usize, tamper: bool, policy: Option<SimPolicy>) -> String {
    st.close_reports(i).unwrap();
    let ids = st
        .unacked_reports(i)
        .unwrap()
        .iter()
        .map(|t| tally_domain::rum::inspect_report(t).unwrap().report_id)
        .collect();
    let info = st.info(i).unwrap();
    let body = AckBody {
        version: "1.0".into(),
        sudi: st.udi(i).unwrap(),
        report_ids: ids,
        ack_time: Utc::now().timestamp(),
        smart_account: info.smart_account,
        virtual_account: info.virtual_account,
        status: "ACK".into(),
    };
    let secret: &[u8] = if tamper {
        b"not-cssm"
    } else {
        b"tally-sim-cssm"
    };
    build_ack_document_with_policy(
        &body,
        policy,
        &Signer::derive(secret, "cssm-ack").unwrap(),
        "k",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_follows_the_published_model() {
    let (h, st) = fleet(3).await;
    let c = client();
    let s = state(&c, &st, 0).await;
    assert_eq!(s["smart-enabled"], true);
    let p = &s["state-info"]["policy"];
    assert_eq!(p["policy-type"], "policy-type-cisco-default");
    assert_eq!(p["ack-required"], true);
    assert_eq!(
        p["policy-subscription"],
        json!({"reporting-first-time": 90, "reporting-ongoing": 90, "reporting-macd": 90})
    );
    assert_eq!(
        p["policy-perpetual"],
        json!({"reporting-first-time": 365, "reporting-ongoing": 0, "reporting-macd": 90})
    );
    // Never acked: no last-received-time; the deadline counts from first use.
    let ack = &s["state-info"]["rum-ack"];
    assert!(ack.get("last-received-time").is_none(), "{ack}");
    let deadline = time(&ack["next-report-deadline"]).unwrap();
    let days = (deadline - Utc::now()).num_days();
    assert!((88..=89).contains(&days), "{days}");

    // Sub-resources answer under their own qualified name; unknown ones are a RESTCONF 404.
    let base = st.device_url(0);
    let (status, _, body) = get(&c, &format!("{base}/{STATE}/state-info/rum-ack")).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v.get("cisco-smart-license:rum-ack").is_some(), "{v}");
    let (status, ct, body) = get(&c, &format!("{base}/{STATE}/state-info/nope")).await;
    assert_eq!((status, ct.as_str()), (404, "application/yang-data+json"));
    assert!(body.contains("ietf-restconf:errors"), "{body}");

    // Credentials are checked, and an XML-only client is refused.
    let r = c.get(format!("{base}/{STATE}")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(format!("{base}/{STATE}"))
        .basic_auth("admin", Some("cisco-sim"))
        .header("accept", "application/yang-data+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 406);
    h.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_device_serves_its_own_policy() {
    let (h, st) = fleet(3).await;
    let c = client();
    knobs(&c, &st, 1, json!({"policy": "custom_30_60_60"})).await;
    let r = c
        .post(format!("{}/sim/knobs", st.base_url()))
        .json(&json!({"indexes": [2], "policy": "enforced"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let p0 = state(&c, &st, 0).await["state-info"]["policy"].clone();
    let s1 = state(&c, &st, 1).await;
    let p1 = &s1["state-info"]["policy"];
    let p2 = state(&c, &st, 2).await["state-info"]["policy"].clone();
    assert_eq!(p0["policy-type"], "policy-type-cisco-default");
    assert_eq!(p1["policy-type"], "policy-type-custom");
    assert_eq!(p1["policy-name"], "Custom 30/60/60");
    assert_eq!(
        p1["policy-subscription"],
        json!({"reporting-first-time": 30, "reporting-ongoing": 60, "reporting-macd": 60})
    );
    assert!(time(&p1["install-time"]).unwrap() > time(&p0["install-time"]).unwrap());
    assert_eq!(p2["policy-enforced"]["reporting-ongoing"], 30);
    assert_eq!(p2["policy-export"]["reporting-ongoing"], 30);
    assert_eq!(p2["policy-subscription"], p0["policy-subscription"]);

    // Software whose model predates rum-ack: the policy, no rum-ack container.
    knobs(&c, &st, 0, json!({"rum_ack": false})).await;
    let info = state(&c, &st, 0).await["state-info"].clone();
    assert!(info.get("rum-ack").is_none(), "{info}");
    assert!(info.get("policy").is_some());

    // The device's own deadline follows its policy: 60 days after the ACK for 30/60/60.
    assert_eq!(close_and_ack(&c, &st, 1, false).await, 200);
    let ack = state(&c, &st, 1).await["state-info"]["rum-ack"].clone();
    let last = time(&ack["last-received-time"]).unwrap();
    let next = time(&ack["next-report-deadline"]).unwrap();
    assert_eq!(next - last, Duration::days(60));
    h.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_ack_moves_only_when_an_ack_was_applied() {
    let (h, st) = fleet(2).await;
    let c = client();
    let last = |s: &Value| time(&s["state-info"]["rum-ack"]["last-received-time"]);

    // An ACK the device cannot verify is refused and moves nothing.
    assert_eq!(close_and_ack(&c, &st, 0, true).await, 400);
    assert_eq!(last(&state(&c, &st, 0).await), None);

    assert_eq!(close_and_ack(&c, &st, 0, false).await, 200);
    let first = last(&state(&c, &st, 0).await).unwrap();
    assert!((Utc::now() - first).num_seconds().abs() < 10);
    assert_eq!(close_and_ack(&c, &st, 0, false).await, 200);
    let second = last(&state(&c, &st, 0).await).unwrap();
    assert!(second > first, "{first} then {second}");

    // "Accepts but does not apply": SUCCESS, and the state stays where it was.
    knobs(&c, &st, 0, json!({"apply_acks": false})).await;
    assert_eq!(close_and_ack(&c, &st, 0, false).await, 200);
    assert_eq!(last(&state(&c, &st, 0).await), Some(second));
    assert!(!st.unacked_reports(0).unwrap().is_empty());
    // ... and still refuses what it cannot verify.
    assert_eq!(close_and_ack(&c, &st, 0, true).await, 400);
    let summary: Value = c
        .get(format!("{}/sim/summary", st.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(summary["imports_not_applied"], 1);
    h.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_without_restconf_still_serves_its_licensing_api() {
    let (h, st) = fleet(2).await;
    let c = client();
    knobs(&c, &st, 1, json!({"restconf": false})).await;
    let base = st.device_url(1);
    for path in [
        STATE.to_owned(),
        "restconf/data/Cisco-IOS-XE-native:native/license/boot/level".to_owned(),
        "restconf/data".to_owned(),
    ] {
        let (status, ct, body) = get(&c, &format!("{base}/{path}")).await;
        assert_eq!(status, 404, "{path}");
        assert!(ct.starts_with("text/html"), "{path}: {ct}");
        assert!(!body.contains("ietf-restconf"), "{body}");
    }
    // Without credentials too: the feature is not there at all.
    let r = c.get(format!("{base}/{STATE}")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // The device's own API goes on: reports, and ACKs that do move its state.
    assert_eq!(close_and_ack(&c, &st, 1, false).await, 200);
    assert!(st.last_ack_time(1).unwrap().is_some());
    // The other device is untouched.
    assert_eq!(state(&c, &st, 0).await["smart-enabled"], true);
    knobs(&c, &st, 1, json!({"restconf": true})).await;
    assert!(
        time(&state(&c, &st, 1).await["state-info"]["rum-ack"]["last-received-time"]).is_some()
    );
    h.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_sent_with_an_ack_is_installed_when_the_ack_is() {
    let (h, st) = fleet(3).await;
    let c = client();
    let policy = |s: &Value| s["state-info"]["policy"].clone();
    let installed0 = time(&policy(&state(&c, &st, 0).await)["install-time"]).unwrap();

    // A policy that does not verify, or names another device, refuses the whole import.
    let doc = ack_doc(&st, 0, false, Some(SimPolicy::Custom306060));
    let forged = doc.replace("custom_30_60_60", "enforced");
    assert_eq!(import(&c, &st, 0, forged).await, 400);
    let other = ack_doc(&st, 1, false, Some(SimPolicy::Custom306060));
    let p1 = other.find("<smartLicensePolicy>").unwrap();
    let p0 = doc.find("<smartLicensePolicy>").unwrap();
    let swapped = format!("{}{}", &doc[..p0], &other[p1..]);
    assert_eq!(import(&c, &st, 0, swapped).await, 400);
    let s = state(&c, &st, 0).await;
    assert_eq!(policy(&s)["policy-type"], "policy-type-cisco-default");
    assert!(
        s["state-info"]["rum-ack"]
            .get("last-received-time")
            .is_none()
    );

    // Verified and applied: the device runs the policy from then on.
    assert_eq!(import(&c, &st, 0, doc).await, 200);
    let s = state(&c, &st, 0).await;
    let p = policy(&s);
    assert_eq!(p["policy-type"], "policy-type-custom");
    assert_eq!(p["policy-name"], "Custom 30/60/60");
    assert_eq!(
        p["policy-subscription"],
        json!({"reporting-first-time": 30, "reporting-ongoing": 60, "reporting-macd": 60})
    );
    let last = time(&s["state-info"]["rum-ack"]["last-received-time"]).unwrap();
    let installed = time(&p["install-time"]).unwrap();
    assert_eq!(installed, last);
    assert!(installed > installed0);
    let next = time(&s["state-info"]["rum-ack"]["next-report-deadline"]).unwrap();
    assert_eq!(next - last, Duration::days(60));

    // The next ACK without a policy keeps it.
    assert_eq!(close_and_ack(&c, &st, 0, false).await, 200);
    let s = state(&c, &st, 0).await;
    assert_eq!(policy(&s)["policy-type"], "policy-type-custom");
    assert_eq!(time(&policy(&s)["install-time"]), Some(installed));

    // A device that answers SUCCESS without applying the ACK does not install its policy.
    knobs(&c, &st, 2, json!({"apply_acks": false})).await;
    let doc = ack_doc(&st, 2, false, Some(SimPolicy::Enforced));
    assert_eq!(import(&c, &st, 2, doc).await, 200);
    let s = state(&c, &st, 2).await;
    assert_eq!(policy(&s)["policy-type"], "policy-type-cisco-default");
    h.stop(false).await;
}
