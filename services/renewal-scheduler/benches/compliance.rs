//! Compliance over a large fleet, against real Postgres (a fresh database cloned from the
//! migrated template): the roll-ups, a 500-row Catalyst Center summary page, the at-risk list
//! and a per-device page, each called through the HTTP routes in-process (no network), with
//! p50/p99 over repeated calls. Not a test: it prints timings.
//!
//! `cargo bench -p tally-renewal-scheduler --bench compliance -- 1000000` (needs
//! TALLY_TEST_NATS_URL, see `scripts/ensure-services`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use actix_web::{App, test, web};
use chrono::{TimeDelta, Utc};
use diesel_async::RunQueryDsl;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_platform::ApiTokens;
use tally_renewal_scheduler::{Config, Scheduler, catalyst, compliance};
use utoipa_actix_web::AppExt;

const TOKEN: &str = "viewer:bench-viewer-token-0123456789";
const SECRET: &str = "bench-secret-key-0123456789";

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n: i64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let calls = 200;
    tally_platform::init_crypto();
    let db = tally_store::testdb::TestDb::new().await.unwrap();
    let pool = tally_store::pool(&db.url, 8).unwrap();
    let bus = tally_bus::testing::bus().await.unwrap();
    let s = Scheduler {
        pool,
        bus,
        cfg: Arc::new(Config {
            token_key: Some(catalyst::token_key(SECRET)),
            ..Config::default()
        }),
        webhooks: None,
    };
    let now = Utc::now();
    // 4 smart accounts x 10 virtual accounts, 2,000 sites, 3% CUBE routers, four tiers; last
    // ACKs spread over 120 days, 5% never acked.
    let started = Instant::now();
    let mut c = s.pool.get().await.unwrap();
    let chunk = 100_000;
    for from in (0..n).step_by(chunk) {
        let to = (from + chunk as i64).min(n) - 1;
        diesel::sql_query(
            "INSERT INTO sched.devices (id, hostname, udi_pid, udi_serial, model, software_version, \
             base_url, site, groups, smart_account, virtual_account, is_cube, network_license, \
             dna_tier, revision, first_seen_at, last_upload_at, last_ack_at) \
             SELECT gen_random_uuid(), 'dev-' || lpad(i::text, 7, '0'), \
             CASE WHEN i % 33 = 0 THEN 'ISR4331/K9' ELSE 'C9300-48P' END, 'FCW' || i, \
             CASE WHEN i % 33 = 0 THEN 'ISR4331' ELSE 'C9300-48P' END, '17.12.4', \
             'https://10.' || (i / 65536) % 256 || '.' || (i / 256) % 256 || '.' || i % 256, \
             'site-' || lpad((i % 2000)::text, 4, '0'), ARRAY['access'], 'sa-' || i % 4, \
             'va-' || (i / 4) % 10, i % 33 = 0, 'network-advantage', \
             (ARRAY[NULL, 'dna-essentials', 'dna-advantage', 'dna-premier'])[1 + i % 4], 1, \
             $3 - interval '200 days', \
             CASE WHEN i % 20 = 0 THEN NULL ELSE $3 - (i % 120) * interval '1 day' - (i % 1440) * interval '1 minute' END, \
             CASE WHEN i % 20 = 0 THEN NULL ELSE $3 - (i % 120) * interval '1 day' - (i % 1440) * interval '1 minute' END \
             FROM generate_series($1::int8, $2::int8) AS i",
        )
        .bind::<diesel::sql_types::BigInt, _>(from)
        .bind::<diesel::sql_types::BigInt, _>(to)
        .bind::<diesel::sql_types::Timestamptz, _>(now)
        .execute(&mut c)
        .await
        .unwrap();
    }
    let load = started.elapsed();
    diesel::sql_query("VACUUM ANALYZE sched.devices")
        .execute(&mut c)
        .await
        .unwrap();
    let started = Instant::now();
    let assessed = compliance::refresh(&mut c, now).await.unwrap();
    let refresh = started.elapsed();
    diesel::sql_query("VACUUM ANALYZE sched.devices")
        .execute(&mut c)
        .await
        .unwrap();
    println!(
        "{n} devices: loaded in {:.1} s (insert with count triggers); deadline engine over {assessed} \
         devices in {:.1} s",
        load.as_secs_f64(),
        refresh.as_secs_f64()
    );

    let (app, _) = App::new()
        .into_utoipa_app()
        .app_data(web::Data::new(s.clone()))
        .app_data(web::Data::new(ApiTokens::parse(TOKEN).unwrap()))
        .app_data(tally_platform::problem::query_config())
        .service(utoipa_actix_web::scope("/api/v1").configure(tally_renewal_scheduler::routes))
        .split_for_parts();
    let app = test::init_service(app.configure(catalyst::routes)).await;
    let req = test::TestRequest::post()
        .uri("/dna/system/api/v1/auth/token")
        .insert_header((
            "Authorization",
            format!(
                "Basic {}",
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    "bench:bench-viewer-token-0123456789"
                )
            ),
        ))
        .to_request();
    let v: serde_json::Value = test::call_and_read_body_json(&app, req).await;
    let dna_token = v["Token"].as_str().unwrap().to_owned();

    let week = (now + TimeDelta::days(7)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let last_page = (n + 499) / 500;
    let cases: Vec<(String, String)> = vec![
        (
            "roll-up by smart account".into(),
            "/api/v1/compliance/summary?by=smart_account".into(),
        ),
        (
            "roll-up by virtual account".into(),
            "/api/v1/compliance/summary?by=virtual_account".into(),
        ),
        (
            "roll-up by site (2,000 rows)".into(),
            "/api/v1/compliance/summary?by=site".into(),
        ),
        (
            "roll-up by tier".into(),
            "/api/v1/compliance/summary?by=tier".into(),
        ),
        (
            "roll-up by site, 7 days ahead (unswept)".into(),
            format!("/api/v1/compliance/summary?by=site&at={week}"),
        ),
        (
            "Catalyst summary page 1 (500 rows)".into(),
            "/dna/intent/api/v1/licenses/device/summary?page_number=1&order=asc&limit=500".into(),
        ),
        (
            format!("Catalyst summary page {} (500 rows)", last_page / 2),
            format!(
                "/dna/intent/api/v1/licenses/device/summary?page_number={}&order=asc&limit=500",
                last_page / 2
            ),
        ),
        (
            format!("Catalyst summary page {last_page} (last)"),
            format!(
                "/dna/intent/api/v1/licenses/device/summary?page_number={last_page}&order=asc&limit=500"
            ),
        ),
        (
            "at-risk, top 100".into(),
            "/api/v1/compliance/at-risk?limit=100".into(),
        ),
        (
            "per-device page (500 rows)".into(),
            "/api/v1/compliance/devices?limit=500".into(),
        ),
        (
            "per-device page, overdue only (500 rows)".into(),
            "/api/v1/compliance/devices?limit=500&status=ack_overdue".into(),
        ),
        (
            "Catalyst networkDeviceLicenses/summary".into(),
            "/dna/intent/api/v1/networkDeviceLicenses/summary".into(),
        ),
    ];
    println!("\n| call | p50 | p99 | max | calls |\n|---|---:|---:|---:|---:|");
    for (name, uri) in &cases {
        // The full-scan roll-up is slow by nature: fewer calls.
        let k = if uri.contains("networkDeviceLicenses")
            || uri.contains(&format!("page_number={}", last_page / 2))
            || uri.contains(&format!("page_number={last_page}"))
        {
            20
        } else {
            calls
        };
        let mut times = Vec::with_capacity(k);
        for i in 0..=k {
            let mut req = test::TestRequest::get().uri(uri);
            req = if uri.starts_with("/dna") {
                req.insert_header(("X-Auth-Token", dna_token.as_str()))
            } else {
                req.insert_header(("Authorization", "Bearer bench-viewer-token-0123456789"))
            };
            let t = Instant::now();
            let resp = test::call_service(&app, req.to_request()).await;
            let status = resp.status();
            let body = test::read_body(resp).await;
            let took = t.elapsed();
            assert!(
                status.is_success(),
                "{uri}: {status} {}",
                String::from_utf8_lossy(&body)
            );
            if i > 0 {
                times.push(took); // the first call warms caches
            }
        }
        times.sort();
        println!(
            "| {name} | {:.1} ms | {:.1} ms | {:.1} ms | {} |",
            pct(&times, 0.5),
            pct(&times, 0.99),
            pct(&times, 1.0),
            times.len()
        );
    }
    // A day passes: the sweep moves the statuses that crossed a threshold.
    let started = Instant::now();
    let moved = compliance::sweep(&mut c, now + TimeDelta::days(1))
        .await
        .unwrap();
    println!(
        "\nsweep one day ahead: {moved} devices changed status in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "bench peak RSS: {:.0} MiB",
        tally_platform::metrics::peak_rss_mib()
    );
}
