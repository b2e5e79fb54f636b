#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Deadlines, risk ranking, roll-ups and alerts over a simulated clock, against real Postgres.

use chrono::{DateTime, TimeDelta, Utc};
use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;
use std::sync::Arc;
use tally_bus::proto;
use tally_platform::SecretBox;
use tally_renewal_scheduler::{Config, Scheduler, compliance, fleet};
use tally_store::testdb::TestDb;
use uuid::Uuid;

async fn count(s: &Scheduler, sql: &str) -> i64 {
    let mut c = s.pool.get().await.unwrap();
    diesel::select(diesel::dsl::sql::<BigInt>(&format!("({sql})")))
        .get_result::<i64>(&mut c)
        .await
        .unwrap()
}

/// Four devices whose last ACK was at `acked`: a CUBE router, two switches (one at another
/// site) and a router without a DNA subscription (nothing to report, no deadline).
async fn fleet_acked_at(acked: DateTime<Utc>) -> (TestDb, Scheduler, Vec<Uuid>) {
    let db = TestDb::new().await.unwrap();
    let pool = tally_store::pool(&db.url, 8).unwrap();
    let bus = tally_bus::testing::bus().await.unwrap();
    let secrets = SecretBox::from_secret("compliance-tests-secret");
    let s = Scheduler {
        pool,
        bus,
        cfg: Arc::new(Config::default()),
        webhooks: Some(tally_webhook::Webhooks::new(
            tally_webhook::Schema::new("sched").unwrap(),
            secrets,
        )),
    };
    let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    let dev =
        |i: usize, host: &str, model: &str, site: &str, cube: bool, dna: &str| proto::Device {
            device_id: ids[i].to_string(),
            hostname: host.into(),
            model: model.into(),
            site: site.into(),
            smart_account: "acme".into(),
            virtual_account: if cube { "Voice" } else { "Campus" }.into(),
            is_cube: cube,
            network_license: "network-advantage".into(),
            dna_tier: dna.into(),
            revision: 1,
            ..Default::default()
        };
    let ev = proto::DevicesUpserted {
        devices: vec![
            dev(0, "sw-a", "C9300-48P", "hq", false, "dna-advantage"),
            dev(1, "cube-1", "ISR4331", "branch-01", true, "dna-essentials"),
            dev(2, "sw-b", "C9200-24P", "branch-01", false, "dna-essentials"),
            dev(3, "rtr-1", "ISR4451", "hq", false, ""),
        ],
    };
    fleet::upsert(&s, "devices-1", ev).await.unwrap();
    let mut c = s.pool.get().await.unwrap();
    diesel::sql_query(
        "UPDATE sched.devices SET first_seen_at = $1 - interval '30 days', last_upload_at = $1, last_ack_at = $1",
    )
    .bind::<diesel::sql_types::Timestamptz, _>(acked)
    .execute(&mut c)
    .await
    .unwrap();
    (db, s, ids)
}

fn t0() -> DateTime<Utc> {
    // Seed 004: last ACK 2026-01-15 08:22:14 UTC, deadline 2026-04-15 08:22:14 UTC.
    "2026-01-15T08:22:14Z".parse().unwrap()
}

async fn thresholds(s: &Scheduler, device: Uuid) -> Vec<String> {
    #[derive(diesel::QueryableByName)]
    struct T {
        #[diesel(sql_type = diesel::sql_types::Text)]
        threshold: String,
    }
    let mut c = s.pool.get().await.unwrap();
    diesel::sql_query("SELECT threshold FROM sched.alerts WHERE device_id = $1 ORDER BY fired_at")
        .bind::<diesel::sql_types::Uuid, _>(device)
        .load::<T>(&mut c)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.threshold)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_fire_once_at_each_threshold_on_a_simulated_clock() {
    let (_db, s, ids) = fleet_acked_at(t0()).await;
    let deadline: DateTime<Utc> = "2026-04-15T08:22:14Z".parse().unwrap();
    {
        let mut c = s.pool.get().await.unwrap();
        s.webhooks
            .as_ref()
            .unwrap()
            .create(
                &mut c,
                tally_webhook::NewWebhook {
                    url: "http://127.0.0.1:9/hook".into(),
                    secret: "0123456789abcdef0123".into(),
                    description: "noc".into(),
                    events: vec![],
                    enabled: true,
                },
            )
            .await
            .unwrap();
    }
    let at = |days_before: i64| deadline - TimeDelta::days(days_before);
    // 31 days before: nothing yet.
    assert_eq!(compliance::evaluate(&s, at(31)).await.unwrap().fired, 0);
    // Each threshold fires once per device with a subscription; evaluating again fires nothing.
    for (n, expect) in [
        (30, 3),
        (30, 0),
        (20, 0),
        (14, 3),
        (7, 3),
        (1, 3),
        (0, 3),
        (-5, 0),
    ] {
        let e = compliance::evaluate(&s, at(n) + TimeDelta::seconds(1))
            .await
            .unwrap();
        assert_eq!(e.fired, expect, "at {n} days before");
    }
    assert_eq!(
        thresholds(&s, ids[1]).await,
        [
            "days_before:30",
            "days_before:14",
            "days_before:7",
            "days_before:1",
            "passed"
        ]
    );
    assert!(
        thresholds(&s, ids[3]).await.is_empty(),
        "no subscription, no deadline"
    );
    // Every fired alert went out once on NATS (outbox) and once per webhook.
    assert_eq!(
        count(
            &s,
            "SELECT count(*) FROM sched.outbox WHERE subject = 'sched.alert.raised'"
        )
        .await,
        15
    );
    assert_eq!(
        count(&s, "SELECT count(*) FROM sched.webhook_deliveries").await,
        15
    );
    // CUBE first among the overdue, as it stops working.
    let mut c = s.pool.get().await.unwrap();
    let rows = compliance::fleet(&mut c).await.unwrap();
    let ranked = compliance::at_risk(&rows, deadline + TimeDelta::days(2));
    assert_eq!(ranked.len(), 3);
    assert_eq!(ranked[0].hostname, "cube-1");
    assert_eq!(ranked[0].impact, "critical");
    assert_eq!(ranked[0].status, "ack_overdue");
    assert_eq!(ranked[0].deadline, Some(deadline));
    let by_site = compliance::roll_up(&rows, "site", deadline - TimeDelta::days(10));
    let branch = by_site.iter().find(|r| r.key == "branch-01").unwrap();
    assert_eq!(
        (branch.devices, branch.ack_pending, branch.critical_at_risk),
        (2, 2, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silenced_site_is_recorded_not_delivered_and_replicas_fire_once() {
    let (_db, s, ids) = fleet_acked_at(t0()).await;
    let mut c = s.pool.get().await.unwrap();
    diesel::sql_query(
        "INSERT INTO sched.silences (id, site, until, reason, created_by) \
         VALUES (gen_random_uuid(), 'branch-01', '2030-01-01Z', 'maintenance', 'test')",
    )
    .execute(&mut c)
    .await
    .unwrap();
    let at: DateTime<Utc> = "2026-03-20T00:00:00Z".parse().unwrap();
    // Two replicas evaluating at once: each alert fires once.
    let (a, b) = tokio::join!(compliance::evaluate(&s, at), compliance::evaluate(&s, at));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.fired + b.fired, 1, "only sw-a at hq is delivered");
    assert_eq!(a.silenced + b.silenced, 2);
    assert_eq!(count(&s, "SELECT count(*) FROM sched.alerts").await, 3);
    assert_eq!(
        count(
            &s,
            "SELECT count(*) FROM sched.outbox WHERE subject = 'sched.alert.raised'"
        )
        .await,
        1
    );
    assert_eq!(thresholds(&s, ids[0]).await, ["days_before:30"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_devices_raise_one_alert_per_cycle_and_stage() {
    use tally_renewal_scheduler::cycles;
    let (_db, s, ids) = fleet_acked_at(t0()).await;
    let cycle = Uuid::now_v7();
    let progress = |reason: &str| proto::CollectionProgress {
        cycle_id: cycle.to_string(),
        devices_failed: 2,
        failures: vec![
            proto::DeviceFailure {
                device_id: ids[1].to_string(),
                reason: reason.into(),
            },
            proto::DeviceFailure {
                device_id: ids[0].to_string(),
                reason: reason.into(),
            },
        ],
        ..Default::default()
    };
    cycles::apply(&s, "p-1", cycles::Update::from(progress("HTTP 500")))
        .await
        .unwrap();
    // Redelivered, and reported again in a later slice of the same cycle: still one alert each.
    cycles::apply(&s, "p-1", cycles::Update::from(progress("HTTP 500")))
        .await
        .unwrap();
    cycles::apply(&s, "p-2", cycles::Update::from(progress("timeout")))
        .await
        .unwrap();
    assert_eq!(
        count(
            &s,
            "SELECT count(*) FROM sched.alerts WHERE kind = 'collection_failed'"
        )
        .await,
        2
    );
    assert_eq!(
        count(&s, &format!("SELECT count(*) FROM sched.alerts WHERE kind = 'collection_failed' AND severity = 'critical' AND device_id = '{}'", ids[1])).await,
        1,
        "the CUBE router's failure is critical"
    );
    assert_eq!(
        count(
            &s,
            "SELECT count(*) FROM sched.outbox WHERE subject = 'sched.alert.raised'"
        )
        .await,
        2
    );
}
