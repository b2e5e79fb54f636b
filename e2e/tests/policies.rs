//! Each device on its own policy, end to end: a fleet with Cisco's default, the 30/60/60 policy
//! seen in the wild, and devices without RESTCONF; after a cycle, each device's deadline in Tally
//! equals what the device itself reports, devices that cannot be read say their policy is
//! assumed, and ACK-deadline alerts fire on each device's own schedule.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;
use tally_e2e::{Online, http_client};

const DEVICES: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_device_is_judged_by_its_own_policy() {
    let Online {
        fleet,
        cssm,
        mut tally,
    } = Online::start(DEVICES, 300).await;
    let http = http_client();
    let knobs = |body: Value| {
        http.post(format!("{}/sim/knobs", fleet.base))
            .json(&body)
            .send()
    };
    let custom: Vec<usize> = (0..DEVICES).filter(|i| i % 3 == 1).collect();
    let no_restconf: Vec<usize> = (0..DEVICES).filter(|i| i % 10 == 2).collect();
    let r = knobs(json!({"indexes": custom, "policy": "custom_30_60_60"}))
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let r = knobs(json!({"indexes": no_restconf, "restconf": false}))
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());

    let id = tally.start_cycle().await;
    let cycle = tally
        .wait_cycle_complete(&id, Duration::from_secs(180))
        .await;
    assert_eq!(
        cycle["ack"]["devices_imported"], DEVICES as u64,
        "{cycle:#}"
    );

    // Hostname -> simulator index, and what Tally holds per hostname.
    let rows = fleet.inventory_rows().await;
    let index_of: HashMap<String, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r["hostname"].as_str().unwrap().to_owned(), i))
        .collect();
    let compliance = tally.get("/compliance/devices?limit=1000").await;
    let compliance = compliance.as_array().unwrap();
    assert_eq!(compliance.len(), DEVICES);
    let at = |v: &Value| -> Option<DateTime<Utc>> { v.as_str().map(|s| s.parse().unwrap()) };
    let (mut compared, mut assumed) = (0, 0);
    for c in compliance {
        let i = index_of[c["hostname"].as_str().unwrap()];
        let tally_deadline = at(&c["deadline"]);
        if no_restconf.contains(&i) {
            assert_eq!(c["policy_source"], "assumed", "{c}");
            assert!(
                c["policy_reason"].as_str().unwrap().contains("RESTCONF")
                    || c["policy_reason"].as_str().unwrap().contains("restconf"),
                "{c}"
            );
            assumed += 1;
            continue;
        }
        assert_eq!(c["policy_source"], "device", "{c}");
        // The device's own view, read from its RESTCONF state now (after the ACK).
        let state: Value = http
            .get(format!(
                "{}/d/{i}/restconf/data/cisco-smart-license:licensing/state",
                fleet.base
            ))
            .basic_auth("admin", Some("cisco-sim"))
            .header("accept", "application/yang-data+json")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let device_deadline = at(
            &state["cisco-smart-license:state"]["state-info"]["rum-ack"]["next-report-deadline"],
        );
        let (t, d) = match (tally_deadline, device_deadline) {
            (Some(t), Some(d)) => (t, d),
            // Nothing due (a perpetual license only, no periodic report): both say so.
            (None, None) => {
                compared += 1;
                continue;
            }
            _ => panic!(
                "device {i}: Tally {tally_deadline:?}, device {device_deadline:?}: {c}\n{state}"
            ),
        };
        assert!(
            (t - d).num_seconds().abs() < 60,
            "device {i} ({}): Tally's deadline {t}, the device's {d}",
            c["policy_name"]
        );
        let days = (t - at(&c["last_ack_at"]).unwrap()).num_days();
        assert_eq!(
            days,
            if custom.contains(&i) { 60 } else { 90 },
            "device {i}: {c}"
        );
        // Tally holds the device's own deadline from the read after the import, and it agrees:
        // the deadline_mismatch check below compared something.
        let held = at(&c["device_deadline"]);
        assert!(
            held.is_some_and(|h| (h - d).num_seconds().abs() < 60),
            "device {i}: Tally holds {held:?} as the device's deadline, the device says {d}: {c}"
        );
        assert_eq!(c["deadline_disagrees"], false, "device {i}: {c}");
        compared += 1;
    }
    eprintln!("[e2e] {compared} deadlines equal the devices' own, {assumed} assumed (no RESTCONF)");
    assert_eq!(assumed, no_restconf.len());

    // A second cycle reads each policy after the first ACK, when the device's own deadline and
    // Tally's are comparable: none disagrees.
    let id = tally.start_cycle().await;
    tally
        .wait_cycle_complete(&id, Duration::from_secs(180))
        .await;

    // 35 days on: only the 30/60/60 devices are within 30 days of their deadline.
    let now = Utc::now() + TimeDelta::days(35);
    let e = tally
        .post_json("/alerts/evaluate", &json!({"at": now}))
        .await;
    let alerts = tally.get("/alerts?limit=1000").await;
    let fired: Vec<usize> = alerts
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "ack_deadline")
        .map(|a| index_of[a["hostname"].as_str().unwrap()])
        .collect();
    let mut expected: Vec<usize> = custom
        .iter()
        .copied()
        .filter(|i| !no_restconf.contains(i))
        .collect();
    let mut got = fired.clone();
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "evaluation {e}");
    // No device disagrees with Tally about its deadline.
    assert!(
        alerts
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["kind"] != "deadline_mismatch"),
        "{alerts:#}"
    );

    // CSSM now sends the 30/60/60 policy with every ACK: after the next cycle each device that
    // takes an ACK runs it, and Tally learns it from the read-back of that import.
    let r = http
        .put(format!("{}/sim/ack-policy", cssm.base))
        .json(&json!({"policy": "custom_30_60_60"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let id = tally.start_cycle().await;
    tally
        .wait_cycle_complete(&id, Duration::from_secs(180))
        .await;
    let compliance = tally.get("/compliance/devices?limit=1000").await;
    let mut moved = 0;
    for c in compliance.as_array().unwrap() {
        let i = index_of[c["hostname"].as_str().unwrap()];
        if no_restconf.contains(&i) {
            continue;
        }
        assert_eq!(c["policy_name"], "Custom 30/60/60", "device {i}: {c}");
        if let (Some(t), Some(ack)) = (at(&c["deadline"]), at(&c["last_ack_at"])) {
            assert_eq!((t - ack).num_days(), 60, "device {i}: {c}");
            moved += 1;
        }
    }
    eprintln!("[e2e] {moved} devices on the policy that came with their ACK");
    assert!(moved > 0);
}
