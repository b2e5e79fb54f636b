#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Devices approach and pass their ACK deadline on a simulated clock: each alert arrives once,
//! at its threshold, on NATS and at a signed webhook, and CUBE routers rank first.

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tally_e2e::Online;

const SECRET: &str = "e2e-webhook-secret-0123456789";

/// (event id, alert JSON) for every delivery whose signature checks out; bad ones are refused.
type Received = Arc<Mutex<Vec<(String, Value)>>>;

async fn receiver() -> (String, Received) {
    let got: Received = Arc::default();
    let g = got.clone();
    let server = HttpServer::new(move || {
        let g = g.clone();
        App::new().route(
            "/hook",
            web::post().to(move |req: HttpRequest, body: web::Bytes| {
                let g = g.clone();
                async move {
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let ok = tally_webhook::verify_signature(
                        SECRET,
                        &h("x-tally-timestamp"),
                        &body,
                        &h("x-tally-signature"),
                        Duration::from_secs(300),
                    );
                    if ok.is_err() {
                        return HttpResponse::Unauthorized().finish();
                    }
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    g.lock().unwrap().push((h("x-tally-event-id"), v));
                    HttpResponse::Ok().finish()
                }
            }),
        )
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .unwrap();
    let addr = server.addrs()[0];
    tokio::spawn(server.run());
    (format!("http://{addr}/hook"), got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deadline_alerts_arrive_once_each_by_nats_and_webhook() {
    let t0 = Instant::now();
    let mut env = Online::start(120, 300).await;
    let tally = &mut env.tally;
    let (url, received) = receiver().await;
    tally
        .post_json(
            "/webhooks",
            &json!({"url": url, "secret": SECRET, "description": "noc"}),
        )
        .await;
    let nats = async_nats::connect(tally_e2e::nats_url()).await.unwrap();
    let mut sub = nats
        .subscribe(format!("{}.events.sched.alert.raised", tally.namespace))
        .await
        .unwrap();

    // One cycle: every device installs an ACK, which starts its 90-day deadline.
    let cycle = tally.start_cycle().await;
    tally
        .wait_cycle_complete(&cycle, Duration::from_secs(60))
        .await;
    let devices = tally.get("/compliance/devices").await;
    let devices = devices.as_array().unwrap();
    assert_eq!(devices.len(), 120);
    let with_deadline: Vec<&Value> = devices
        .iter()
        .filter(|d| !d["deadline"].is_null())
        .collect();
    assert!(!with_deadline.is_empty());
    assert!(
        devices.iter().all(|d| d["status"] == "in_compliance"),
        "{devices:#?}"
    );
    let latest: DateTime<Utc> = with_deadline
        .iter()
        .map(|d| {
            d["deadline"]
                .as_str()
                .unwrap()
                .parse::<DateTime<Utc>>()
                .unwrap()
        })
        .max()
        .unwrap();
    let n = with_deadline.len();

    // The simulated clock walks up to and past the deadline.
    let mut fired_total = 0;
    for (days_before, expect) in [
        (31, 0),
        (29, n),
        (28, 0),
        (13, n),
        (6, n),
        (0, n),
        (-3, n),
        (-10, 0),
    ] {
        let at = latest - TimeDelta::days(days_before)
            + TimeDelta::hours(if days_before == 0 { -1 } else { 0 });
        let at = if days_before == -3 {
            latest + TimeDelta::days(3)
        } else {
            at
        };
        let e = tally
            .post_json("/alerts/evaluate", &json!({"at": at}))
            .await;
        assert_eq!(e["fired"], expect, "{days_before} days before: {e}");
        fired_total += expect;
    }
    assert_eq!(fired_total, 5 * n);
    let alerts = tally.get("/alerts").await;
    let alerts = alerts.as_array().unwrap();
    assert_eq!(alerts.len(), 5 * n);
    let mut per_threshold: HashMap<String, usize> = HashMap::new();
    for a in alerts {
        *per_threshold
            .entry(a["threshold"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    for t in [
        "days_before:30",
        "days_before:14",
        "days_before:7",
        "days_before:1",
        "passed",
    ] {
        assert_eq!(per_threshold[t], n, "{t}");
    }

    // NATS: each alert once.
    let mut on_nats: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while on_nats.values().sum::<usize>() < 5 * n && Instant::now() < deadline {
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
            // The payload is the protobuf AlertRaised; its id is field 1, a short string.
            assert_eq!(m.payload[0], 0x0a, "AlertRaised starts with its alert_id");
            let id =
                String::from_utf8_lossy(&m.payload[2..2 + usize::from(m.payload[1])]).into_owned();
            *on_nats.entry(id).or_default() += 1;
        }
    }
    assert_eq!(on_nats.len(), 5 * n, "alerts seen on NATS");
    assert!(on_nats.values().all(|&c| c == 1));

    // Webhook: each alert once, signed.
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.lock().unwrap().len() < 5 * n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 5 * n, "webhook deliveries");
    let mut ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 5 * n, "each alert delivered once");
    for id in &ids {
        assert!(
            on_nats.contains_key(*id),
            "webhook and NATS name the same alerts"
        );
    }

    // Past the deadline.
    let ranked = tally
        .get(&format!(
            "/compliance/at-risk?limit=1000&at={}",
            (latest + TimeDelta::days(3))
                .to_rfc3339()
                .replace('+', "%2B")
        ))
        .await;
    let ranked = ranked.as_array().unwrap();
    assert_eq!(ranked.len(), n);
    // Voice gateways (CUBE, SRST, CME) stop working: they come first, all of them.
    let voice = |d: &serde_json::Value| matches!(d["role"].as_str(), Some("cube" | "srst" | "cme"));
    let gateways = ranked.iter().filter(|d| voice(d)).count();
    assert!(ranked.iter().any(|d| d["role"] == "cube"), "CUBE routers");
    assert!(
        ranked
            .iter()
            .any(|d| d["role"] == "srst" || d["role"] == "cme"),
        "SRST or CME routers"
    );
    assert!(
        ranked[..gateways]
            .iter()
            .all(|d| voice(d) && d["impact"] == "critical")
    );
    assert!(ranked.iter().all(|d| d["status"] == "ack_overdue"));
    tally.proc.assert_running();
    eprintln!("[e2e] total {:.1} s", t0.elapsed().as_secs_f64());
}
