//! Compliance over a large fleet, against real Postgres (a fresh database cloned from the
//! migrated template): the roll-ups, the at-risk list and a per-device page, each called through
//! the HTTP routes in-process (no network), with p50/p99 over repeated calls. Not a test: it
//! prints timings. The Catalyst Center calls over the same fleet are catalyst-api's `catalyst`
//! bench.
//!
//! `cargo bench -p tally-renewal-scheduler --bench compliance -- 1000000` (needs
//! TALLY_TEST_NATS_URL, see `scripts/ensure-services`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fleet;

use actix_web::{test, web};
use chrono::{TimeDelta, Utc};
use std::sync::Arc;
use std::time::Instant;
use tally_platform::ApiTokens;
use tally_renewal_scheduler::{Config, Scheduler, deadlines};

const TOKEN: &str = "viewer:bench-viewer-token-0123456789";

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n = fleet::devices_arg();
    let calls = 200;
    tally_platform::init_crypto();
    let db = tally_testkit::TestDb::new().await.unwrap();
    let pool = tally_store::pool(&db.url, 8).unwrap();
    let bus = tally_testkit::bus().await.unwrap();
    let s = Scheduler {
        pool,
        bus,
        cfg: Arc::new(Config::default()),
        webhooks: None,
    };
    let now = Utc::now();
    let mut c = s.pool.get().await.unwrap();
    let load = fleet::load(&mut c, n, now).await;
    let started = Instant::now();
    let assessed = deadlines::refresh(&mut c, now).await.unwrap();
    let refresh = started.elapsed();
    fleet::analyze(&mut c).await;
    println!(
        "{n} devices: loaded in {:.1} s (insert with count triggers); deadline engine over {assessed} \
         devices in {:.1} s",
        load.as_secs_f64(),
        refresh.as_secs_f64()
    );

    let tokens = web::Data::new(ApiTokens::parse(TOKEN).unwrap());
    let (app, _api) = tally_platform::api_app(Default::default(), tokens)
        .service(tally_platform::api_scope().configure(tally_renewal_scheduler::routes))
        .app_data(web::Data::new(s.clone()))
        .split_for_parts();
    let app = test::init_service(app).await;

    let week = (now + TimeDelta::days(7)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let cases: Vec<(&str, String)> = vec![
        (
            "roll-up by smart account",
            "/api/v1/compliance/summary?by=smart_account".into(),
        ),
        (
            "roll-up by virtual account",
            "/api/v1/compliance/summary?by=virtual_account".into(),
        ),
        (
            "roll-up by site (2,000 rows)",
            "/api/v1/compliance/summary?by=site".into(),
        ),
        (
            "roll-up by tier",
            "/api/v1/compliance/summary?by=tier".into(),
        ),
        (
            "roll-up by site, 7 days ahead (unswept)",
            format!("/api/v1/compliance/summary?by=site&at={week}"),
        ),
        (
            "at-risk, top 100",
            "/api/v1/compliance/at-risk?limit=100".into(),
        ),
        (
            "per-device page (500 rows)",
            "/api/v1/compliance/devices?limit=500".into(),
        ),
        (
            "per-device page, overdue only (500 rows)",
            "/api/v1/compliance/devices?limit=500&status=ack_overdue".into(),
        ),
    ];
    println!("\n| call | p50 | p99 | max | calls |\n|---|---:|---:|---:|---:|");
    for (name, uri) in &cases {
        fleet::time(&app, name, calls, || {
            test::TestRequest::get()
                .uri(uri)
                .insert_header(("Authorization", "Bearer bench-viewer-token-0123456789"))
                .to_request()
        })
        .await;
    }
    // A day passes: the sweep moves the statuses that crossed a threshold.
    let started = Instant::now();
    let moved = deadlines::sweep(&mut c, now + TimeDelta::days(1))
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
