#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Deadlines, risk ranking, roll-ups and alerts over a simulated clock, against real Postgres.

mod common;

use chrono::{DateTime, TimeDelta, Utc};
use diesel_async::RunQueryDsl;
use tally_bus::proto;
use tally_platform::SecretBox;
use tally_renewal_scheduler::compliance::{Dimension, Status};
use tally_renewal_scheduler::{Scheduler, alerts, compliance, deadlines, fleet};
use tally_testkit::{TestDb, count, fixtures};
use uuid::Uuid;

/// Four devices whose last ACK was at `acked`: a CUBE router, two switches (one at another
/// site) and a router without a DNA subscription (nothing to report, no deadline).
async fn fleet_acked_at(acked: DateTime<Utc>) -> (TestDb, Scheduler, Vec<Uuid>) {
    let (db, mut s) = common::scheduler().await;
    s.webhooks = Some(tally_webhook::Webhooks::new(
        tally_webhook::Schema::new("sched").unwrap(),
        SecretBox::from_secret("compliance-tests-secret"),
    ));
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
    // As inventory publishes them, projected by the scheduler's own consumer.
    let devices = vec![
        dev(0, "sw-a", "C9300-48P", "hq", false, "dna-advantage"),
        dev(1, "cube-1", "ISR4331", "branch-01", true, "dna-essentials"),
        dev(2, "sw-b", "C9200-24P", "branch-01", false, "dna-essentials"),
        dev(3, "rtr-1", "ISR4451", "hq", false, ""),
    ];
    fixtures::publish_devices(&s.bus, devices).await.unwrap();
    tally_testkit::consume_until(
        tally_renewal_scheduler::router(s.clone())
            .run(s.bus.clone(), tally_renewal_scheduler::DURABLE),
        &s.pool,
        "SELECT count(*) FROM sched.devices",
        4,
    )
    .await;
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
    assert_eq!(alerts::evaluate(&s, at(31)).await.unwrap().fired, 0);
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
        let e = alerts::evaluate(&s, at(n) + TimeDelta::seconds(1))
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
            &s.pool,
            "SELECT count(*) FROM sched.outbox WHERE subject = 'sched.alert.raised'"
        )
        .await,
        15
    );
    assert_eq!(
        count(&s.pool, "SELECT count(*) FROM sched.webhook_deliveries").await,
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
    let by_site = compliance::roll_up(&rows, Dimension::Site, deadline - TimeDelta::days(10));
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
    let (a, b) = tokio::join!(alerts::evaluate(&s, at), alerts::evaluate(&s, at));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.fired + b.fired, 1, "only sw-a at hq is delivered");
    assert_eq!(a.silenced + b.silenced, 2);
    assert_eq!(count(&s.pool, "SELECT count(*) FROM sched.alerts").await, 3);
    assert_eq!(
        count(
            &s.pool,
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
            &s.pool,
            "SELECT count(*) FROM sched.alerts WHERE kind = 'collection_failed'"
        )
        .await,
        2
    );
    assert_eq!(
        count(&s.pool, &format!("SELECT count(*) FROM sched.alerts WHERE kind = 'collection_failed' AND severity = 'critical' AND device_id = '{}'", ids[1])).await,
        1,
        "the CUBE router's failure is critical"
    );
    assert_eq!(
        count(
            &s.pool,
            "SELECT count(*) FROM sched.outbox WHERE subject = 'sched.alert.raised'"
        )
        .await,
        2
    );
}

/// A deterministic spread of devices (xorshift, so a failure replays): sites, accounts, tiers,
/// CUBE routers, and last ACKs from 200 days before `t` to `t`, some never acked.
async fn spread_fleet(s: &Scheduler, n: usize, seed: u64, t: DateTime<Utc>) -> Vec<Uuid> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
    let mut acks = Vec::new();
    let devices = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let r = next();
            acks.push((r % 9 != 0).then(|| t - TimeDelta::hours((r >> 8) as i64 % (200 * 24))));
            proto::Device {
                device_id: id.to_string(),
                hostname: format!("dev-{i:04}"),
                model: if r % 7 == 0 { "ISR4331" } else { "C9300-24P" }.into(),
                site: format!("site-{}", (r >> 16) % 5),
                smart_account: format!("sa-{}", (r >> 20) % 3),
                virtual_account: format!("va-{}", (r >> 24) % 2),
                is_cube: r % 7 == 0,
                network_license: "network-advantage".into(),
                dna_tier: ["", "dna-essentials", "dna-advantage"][((r >> 28) % 3) as usize].into(),
                revision: 1,
                ..Default::default()
            }
        })
        .collect();
    fleet::upsert(
        s,
        &format!("spread-{seed}"),
        proto::DevicesUpserted { devices },
    )
    .await
    .unwrap();
    let mut c = s.pool.get().await.unwrap();
    let (with, times): (Vec<Uuid>, Vec<DateTime<Utc>>) = ids
        .iter()
        .zip(&acks)
        .filter_map(|(id, a)| a.map(|a| (*id, a)))
        .unzip();
    diesel::sql_query(
        "UPDATE sched.devices d SET first_seen_at = $3 - interval '300 days', last_upload_at = u.t, \
         last_ack_at = u.t FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, t) WHERE d.id = u.id",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(&with)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Timestamptz>, _>(&times)
    .bind::<diesel::sql_types::Timestamptz, _>(t)
    .execute(&mut c)
    .await
    .unwrap();
    diesel::sql_query(
        "UPDATE sched.devices SET first_seen_at = $1 - interval '300 days' WHERE last_ack_at IS NULL",
    )
    .bind::<diesel::sql_types::Timestamptz, _>(t)
    .execute(&mut c)
    .await
    .unwrap();
    ids
}

/// The stored, maintained roll-up must say exactly what assessing every device says.
async fn assert_rollups_match(s: &Scheduler, at: DateTime<Utc>, clock: DateTime<Utc>, what: &str) {
    let mut c = s.pool.get().await.unwrap();
    for &by in Dimension::ALL {
        let stored = compliance::summary(&mut c, by, at, clock).await.unwrap();
        let rows = compliance::fleet(&mut c).await.unwrap();
        let fresh = compliance::roll_up(&rows, by, at);
        let key = |v: &[compliance::RollUp]| {
            v.iter()
                .map(|r| {
                    (
                        r.key.clone(),
                        r.devices,
                        r.in_compliance,
                        r.ack_pending,
                        r.out_of_compliance,
                        r.ack_overdue,
                        r.critical_at_risk,
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(key(&stored), key(&fresh), "by {by} at {at} ({what})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_rollups_equal_assessing_every_device() {
    let (_db, s, _) = fleet_acked_at(t0()).await;
    let t = t0() + TimeDelta::days(40);
    for seed in [7, 1234567] {
        spread_fleet(&s, 150, seed, t).await;
    }
    // The first read runs the deadline engine over every new device.
    assert_rollups_match(&s, t, t, "first read").await;
    // Clock moves on without a sweep: stored statuses expire and are corrected per device.
    for days in [1, 10, 29, 31, 60, 95, 200] {
        assert_rollups_match(&s, t + TimeDelta::days(days), t, "ahead, unswept").await;
    }
    // A sweep moves the stored statuses; asking about an earlier time counts every device.
    let mut c = s.pool.get().await.unwrap();
    let moved = deadlines::sweep(&mut c, t + TimeDelta::days(45))
        .await
        .unwrap();
    assert!(moved > 0, "statuses crossed a threshold in 45 days");
    for days in [45, 46, 100, 10, 0] {
        assert_rollups_match(
            &s,
            t + TimeDelta::days(days),
            t + TimeDelta::days(45),
            "swept",
        )
        .await;
    }
    // New ACKs, a deletion and a move to another site: counts follow in the same transaction.
    diesel::sql_query(
        "UPDATE sched.devices SET last_ack_at = $1, last_upload_at = $1 \
         WHERE hostname LIKE 'dev-00%'",
    )
    .bind::<diesel::sql_types::Timestamptz, _>(t + TimeDelta::days(46))
    .execute(&mut c)
    .await
    .unwrap();
    diesel::sql_query("UPDATE sched.devices SET site = 'site-moved' WHERE hostname LIKE 'dev-01%'")
        .execute(&mut c)
        .await
        .unwrap();
    let gone: Vec<String> = compliance::fleet(&mut c)
        .await
        .unwrap()
        .iter()
        .filter(|d| d.hostname.starts_with("dev-02"))
        .map(|d| d.id.to_string())
        .collect();
    fleet::delete(&s, "del-1", proto::DevicesDeleted { device_ids: gone })
        .await
        .unwrap();
    for days in [46, 47, 80, 140] {
        assert_rollups_match(
            &s,
            t + TimeDelta::days(days),
            t + TimeDelta::days(46),
            "after changes",
        )
        .await;
    }
    // Every dimension counts every device once.
    for &by in Dimension::ALL {
        assert_eq!(
            count(
                &s.pool,
                &format!("SELECT sum(n)::int8 FROM sched.compliance_counts WHERE dim = '{by}'")
            )
            .await,
            count(
                &s.pool,
                "SELECT count(*) FROM sched.devices WHERE NOT deleted"
            )
            .await,
            "{by}"
        );
    }
}

fn pools_event(held: i64, quantity: i64, end: &str, at: DateTime<Utc>) -> proto::PoolsSynced {
    proto::PoolsSynced {
        smart_account: "acme".into(),
        synced_at_ms: at.timestamp_millis(),
        pools: vec![
            proto::Pool {
                virtual_account: "Campus".into(),
                license: "C9300 DNA Advantage, 48-port, 3Y".into(),
                level: "dna-advantage".into(),
                quantity,
                cssm_in_use: held.min(quantity),
                held,
                terms: vec![proto::PoolTerm {
                    subscription_id: "Sub-001".into(),
                    license_type: "TERM".into(),
                    quantity,
                    start_date: "2025-06-01".into(),
                    end_date: end.into(),
                }],
                models: vec!["C9300-48*".into()],
            },
            proto::Pool {
                virtual_account: "Campus".into(),
                license: "Network Advantage, 48-port".into(),
                level: "network-advantage".into(),
                quantity: 100,
                cssm_in_use: 3,
                held: 3,
                terms: vec![proto::PoolTerm {
                    subscription_id: String::new(),
                    license_type: "PERPETUAL".into(),
                    quantity: 100,
                    start_date: "2025-06-01".into(),
                    end_date: String::new(),
                }],
                models: vec!["C9300-48*".into()],
            },
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_bring_renewal_reminders_and_out_of_compliance() {
    use tally_renewal_scheduler::pools;
    let (_db, s, ids) = fleet_acked_at(t0()).await;
    let end: DateTime<Utc> = "2026-06-01T00:00:00Z".parse().unwrap();
    let synced = t0() + TimeDelta::days(1);
    // sw-a holds DNA Advantage in acme/Campus; CSSM sold 1 and Tally's ledger holds 2.
    pools::synced(&s, "pools-1", pools_event(2, 1, "2026-06-01", synced))
        .await
        .unwrap();
    let mut c = s.pool.get().await.unwrap();
    let page = compliance::devices_page(
        &mut c,
        &compliance::DeviceFilter {
            status: Some(Status::OutOfCompliance),
            limit: 10,
            ..Default::default()
        },
        synced,
        synced,
    )
    .await
    .unwrap();
    assert_eq!(
        page.iter().map(|d| d.device_id).collect::<Vec<_>>(),
        [ids[0]],
        "only the device on the overcommitted level in that VA"
    );
    assert_rollups_match(&s, synced, synced, "pool over").await;
    let kinds = |kind: &'static str| {
        let s = &s;
        async move {
            count(
                &s.pool,
                &format!("SELECT count(*) FROM sched.alerts WHERE kind = '{kind}'"),
            )
            .await
        }
    };
    // The pool is over: one alert; the term is 4 months out: no reminder yet.
    let e = alerts::evaluate(&s, end - TimeDelta::days(91))
        .await
        .unwrap();
    assert_eq!(
        (kinds("out_of_compliance").await, kinds("term_end").await),
        (1, 0)
    );
    assert!(e.fired >= 1);
    // 90, 60 and 30 days before the end: one reminder each, however often evaluated.
    for (days, want) in [(90, 1), (89, 1), (60, 2), (45, 2), (30, 3), (1, 3), (-5, 3)] {
        alerts::evaluate(&s, end - TimeDelta::days(days) + TimeDelta::seconds(1))
            .await
            .unwrap();
        assert_eq!(kinds("term_end").await, want, "{days} days before the end");
    }
    assert_eq!(kinds("out_of_compliance").await, 1, "one alert per episode");
    // The perpetual pool never gets a reminder; every reminder names the subscription.
    assert_eq!(
        count(&s.pool, "SELECT count(*) FROM sched.alerts WHERE kind = 'term_end' AND subject LIKE '%Sub-001' AND message LIKE '%renew%'").await,
        3
    );
    // An older announcement redelivered late changes nothing; licenses bought clear it.
    pools::synced(
        &s,
        "pools-0",
        pools_event(2, 1, "2026-06-01", synced - TimeDelta::hours(1)),
    )
    .await
    .unwrap();
    pools::synced(
        &s,
        "pools-2",
        pools_event(2, 5, "2027-06-01", synced + TimeDelta::days(2)),
    )
    .await
    .unwrap();
    assert_eq!(
        count(
            &s.pool,
            "SELECT count(*) FROM sched.devices WHERE out_of_compliance"
        )
        .await,
        0
    );
    assert_rollups_match(
        &s,
        synced + TimeDelta::days(2),
        synced + TimeDelta::days(2),
        "pool fixed",
    )
    .await;
    // Over again later: a new episode, a new alert.
    pools::synced(
        &s,
        "pools-3",
        pools_event(9, 5, "2027-06-01", synced + TimeDelta::days(3)),
    )
    .await
    .unwrap();
    alerts::evaluate(&s, synced + TimeDelta::days(3))
        .await
        .unwrap();
    assert_eq!(kinds("out_of_compliance").await, 2);
    assert_eq!(
        count(
            &s.pool,
            "SELECT count(*) FROM sched.devices WHERE out_of_compliance"
        )
        .await,
        1
    );
    // A pool for other models (C9200s) being over does not touch the C9300 in that VA.
    let mut other = pools_event(9, 5, "2027-06-01", synced + TimeDelta::days(4));
    other.pools[0].models = vec!["C9200-48*".into()];
    pools::synced(&s, "pools-4", other).await.unwrap();
    assert_eq!(
        count(
            &s.pool,
            "SELECT count(*) FROM sched.devices WHERE out_of_compliance"
        )
        .await,
        0
    );
    // An announcement that empties the account is not undone by an older one delivered late.
    let mut empty = pools_event(0, 0, "", synced + TimeDelta::days(6));
    empty.pools.clear();
    pools::synced(&s, "pools-6", empty).await.unwrap();
    pools::synced(
        &s,
        "pools-5",
        pools_event(9, 5, "2027-06-01", synced + TimeDelta::days(5)),
    )
    .await
    .unwrap();
    assert_eq!(count(&s.pool, "SELECT count(*) FROM sched.pools").await, 0);
    assert_eq!(
        count(&s.pool, "SELECT count(*) FROM sched.outbox WHERE subject = 'sched.alert.raised' AND payload::text LIKE '%'").await,
        count(&s.pool, "SELECT count(*) FROM sched.alerts WHERE NOT silenced").await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srst_and_cme_gateways_rank_with_cube() {
    let (_db, s, _) = fleet_acked_at(t0()).await;
    let ids: Vec<Uuid> = (0..2).map(|_| Uuid::now_v7()).collect();
    let dev = |i: usize, host: &str, role: &str| proto::Device {
        device_id: ids[i].to_string(),
        hostname: host.into(),
        model: "ISR4331".into(),
        site: "branch-02".into(),
        smart_account: "acme".into(),
        virtual_account: "Voice".into(),
        voice_role: role.into(),
        network_license: "network-advantage".into(),
        dna_tier: "dna-essentials".into(),
        revision: 1,
        ..Default::default()
    };
    fleet::upsert(
        &s,
        "voice-1",
        proto::DevicesUpserted {
            devices: vec![dev(0, "srst-1", "srst"), dev(1, "cme-1", "cme")],
        },
    )
    .await
    .unwrap();
    // The projection ran the deadline engine in its own transaction: no reader pays for it.
    assert_eq!(
        count(
            &s.pool,
            &format!(
                "SELECT count(*) FROM sched.devices WHERE NOT assessed AND id IN ('{}', '{}')",
                ids[0], ids[1]
            )
        )
        .await,
        0
    );
    let mut c = s.pool.get().await.unwrap();
    diesel::sql_query(
        "UPDATE sched.devices SET first_seen_at = $1 - interval '30 days', last_upload_at = $1, \
         last_ack_at = $1",
    )
    .bind::<diesel::sql_types::Timestamptz, _>(t0())
    .execute(&mut c)
    .await
    .unwrap();
    let at = t0() + TimeDelta::days(95);
    let ranked = compliance::at_risk_page(&mut c, at, at, 10).await.unwrap();
    let roles: Vec<(&str, &str)> = ranked
        .iter()
        .map(|d| (d.role.as_str(), d.impact.as_str()))
        .collect();
    // The three gateways first (the CUBE router flagged only by is_cube too), then switches.
    let mut head = roles[..3].to_vec();
    head.sort();
    assert_eq!(
        head,
        [
            ("cme", "critical"),
            ("cube", "critical"),
            ("srst", "critical")
        ]
    );
    assert!(roles[3..].iter().all(|(_, i)| *i == "warning"), "{roles:?}");
    let srst = ranked.iter().find(|d| d.hostname == "srst-1").unwrap();
    assert!(
        srst.reason.starts_with("SRST shuts down"),
        "{}",
        srst.reason
    );
}

const ADMIN: &str = "admin-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compliance_alert_and_webhook_routes_answer_with_problems() {
    use actix_web::{test, web};
    use serde_json::{Value, json};
    let (_db, s, _ids) = fleet_acked_at(t0()).await;
    let tokens =
        web::Data::new(tally_platform::ApiTokens::parse(&format!("admin:{ADMIN}")).unwrap());
    // The app as `tally serve` assembles it, with only the scheduler's routes.
    let (app, _api) = tally_platform::api_app(Default::default(), tokens)
        .service(tally_platform::api_scope().configure(tally_renewal_scheduler::routes))
        .app_data(web::Data::new(s))
        .split_for_parts();
    let app = test::init_service(app).await;
    let call = async |req: test::TestRequest| {
        let req = req.insert_header(("authorization", format!("Bearer {ADMIN}")));
        let resp = test::call_service(&app, req.to_request()).await;
        let status = resp.status().as_u16();
        let body = test::read_body(resp).await;
        (
            status,
            serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
        )
    };
    let get = |uri: &str| test::TestRequest::get().uri(uri);

    for uri in [
        "/api/v1/compliance/devices?limit=2",
        "/api/v1/compliance/devices?limit=2&offset=2",
    ] {
        let (status, v) = call(get(uri)).await;
        assert_eq!(status, 200, "{uri}: {v}");
        assert_eq!(v.as_array().map(Vec::len), Some(2), "{uri}: {v}");
    }
    let id = Uuid::now_v7();
    for (req, field, detail) in [
        (
            get("/api/v1/compliance/devices?limit=0"),
            "limit",
            "limit: 0 is not between 1 and 100000",
        ),
        (
            get("/api/v1/compliance/devices?limit=100001"),
            "limit",
            "limit: 100001 is not between 1 and 100000",
        ),
        (
            get("/api/v1/compliance/devices?offset=-1"),
            "offset",
            "offset: -1 is negative",
        ),
        (
            get("/api/v1/alerts?limit=0"),
            "limit",
            "limit: 0 is not between 1 and 100000",
        ),
        (
            test::TestRequest::post()
                .uri("/api/v1/webhooks")
                .set_json(json!({"url": "ftp://hooks.example", "secret": "0123456789abcdef"})),
            "url",
            "url: scheme must be http or https",
        ),
        (
            test::TestRequest::post()
                .uri("/api/v1/webhooks")
                .set_json(json!({"url": "https://hooks.example", "secret": "short"})),
            "secret",
            "secret: must be at least 16 characters",
        ),
    ] {
        let (status, p) = call(req).await;
        assert_eq!(status, 422, "{detail}: {p}");
        assert_eq!(p["code"], "validation-failed", "{p}");
        assert_eq!(p["errors"][0]["field"], field, "{p}");
        assert_eq!(p["detail"], detail, "{p}");
    }
    for (req, detail) in [
        (
            test::TestRequest::post().uri(&format!("/api/v1/alerts/{id}/ack")),
            format!("no alert {id}"),
        ),
        (
            test::TestRequest::delete().uri(&format!("/api/v1/silences/{id}")),
            format!("no silence {id}"),
        ),
        (
            test::TestRequest::delete().uri(&format!("/api/v1/webhooks/{id}")),
            format!("no webhook {id}"),
        ),
    ] {
        let (status, p) = call(req).await;
        assert_eq!(status, 404, "{detail}: {p}");
        assert_eq!(
            (&p["code"], &p["detail"]),
            (&json!("not-found"), &json!(detail))
        );
    }
    for uri in ["/api/v1/alerts", "/api/v1/silences", "/api/v1/webhooks"] {
        let (status, v) = call(get(uri)).await;
        assert_eq!(
            (status, v.as_array().map(Vec::len)),
            (200, Some(0)),
            "{uri}: {v}"
        );
    }
}

/// cssm-uplink's problems (a batch CSSM refused for good, ACK entries that matched nothing)
/// raise one alert per batch and problem, naming the reason; critical when a CUBE waits on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_problems_raise_one_alert_per_batch_naming_the_reason() {
    use tally_renewal_scheduler::alerts;
    let (_db, s, ids) = fleet_acked_at(t0()).await;
    let batch = Uuid::now_v7();
    let failed = proto::UplinkProblem {
        batch_id: batch.to_string(),
        kind: "batch_failed".into(),
        smart_account: "acme".into(),
        virtual_account: "Voice".into(),
        reason: "Invalid Smart Account ID acme (INVALID_SMART_ACCOUNT)".into(),
        reports: 4,
        device_ids: vec![ids[0].to_string(), ids[1].to_string()],
        at_ms: 1_767_000_000_000,
        unmatched: 0,
    };
    alerts::uplink::problem(&s, "u-1", failed.clone())
        .await
        .unwrap();
    // Redelivered, or sent again under another id: still one alert.
    alerts::uplink::problem(&s, "u-1", failed.clone())
        .await
        .unwrap();
    alerts::uplink::problem(&s, "u-2", failed).await.unwrap();
    let subject = format!("batch:{batch}");
    assert_eq!(
        count(&s.pool, &format!("SELECT count(*) FROM sched.alerts WHERE kind = 'upload_failed' AND subject = '{subject}' AND severity = 'critical' AND threshold = 'batch_failed' AND message LIKE '%Invalid Smart Account ID acme (INVALID_SMART_ACCOUNT)%' AND message LIKE '%/retry%'")).await,
        1
    );
    let unmatched = proto::UplinkProblem {
        batch_id: batch.to_string(),
        kind: "ack_unmatched".into(),
        virtual_account: "Campus".into(),
        reason: "1 ACK entry from CSSM matched no device of the batch".into(),
        unmatched: 1,
        at_ms: 1_767_000_000_000,
        ..Default::default()
    };
    alerts::uplink::problem(&s, "u-3", unmatched).await.unwrap();
    assert_eq!(
        count(&s.pool, &format!("SELECT count(*) FROM sched.alerts WHERE subject = '{subject}' AND threshold = 'ack_unmatched' AND severity = 'warning' AND message LIKE '%matched no device%'")).await,
        1
    );
    assert_eq!(
        count(
            &s.pool,
            "SELECT count(*) FROM sched.outbox WHERE subject = 'sched.alert.raised'"
        )
        .await,
        2
    );
}

/// Each device's own policy (read by rum-aggregator) sets its deadline; a device that could not
/// be read runs on Cisco's default and says why; a device whose own next ACK deadline is a day
/// or more from Tally's raises one deadline_mismatch alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_device_runs_on_its_own_policy_and_a_disagreeing_device_deadline_alerts() {
    use tally_renewal_scheduler::policies;
    let (_db, s, ids) = fleet_acked_at(t0()).await;
    let custom = |i: usize, next_ack: DateTime<Utc>| proto::DevicePolicy {
        device_id: ids[i].to_string(),
        source: "device".into(),
        name: "Custom Policy".into(),
        ack_required: true,
        perpetual: Some(proto::PolicyAttrs {
            first_report_days: 30,
            reporting_frequency_days: 60,
            report_on_change_days: 60,
        }),
        subscription: Some(proto::PolicyAttrs {
            first_report_days: 30,
            reporting_frequency_days: 60,
            report_on_change_days: 60,
        }),
        enforced: None,
        last_ack_ms: t0().timestamp_millis(),
        next_ack_deadline_ms: next_ack.timestamp_millis(),
        read_at_ms: 1_800_000_000_000,
        ..Default::default()
    };
    let ev = proto::DevicePoliciesRead {
        devices: vec![
            // Agrees: 60 days after the last ACK under 30/60/60.
            custom(0, t0() + TimeDelta::days(60)),
            // Says 90 days, as if it ran Cisco's default: disagrees.
            custom(2, t0() + TimeDelta::days(90)),
            proto::DevicePolicy {
                device_id: ids[1].to_string(),
                source: "assumed".into(),
                reason: "RESTCONF is not enabled on the device (404 on /restconf)".into(),
                read_at_ms: 1_800_000_000_000,
                ..Default::default()
            },
            // A device the scheduler does not hold, and a bad id: skipped, the rest stored.
            proto::DevicePolicy {
                device_id: Uuid::now_v7().to_string(),
                source: "device".into(),
                read_at_ms: 1,
                ..Default::default()
            },
            proto::DevicePolicy {
                device_id: "not-a-uuid".into(),
                ..Default::default()
            },
        ],
    };
    policies::read(&s, "p-1", ev.clone()).await.unwrap();
    // Redelivered: nothing more.
    policies::read(&s, "p-1", ev).await.unwrap();

    let mut c = s.pool.get().await.unwrap();
    let rows = compliance::fleet(&mut c).await.unwrap();
    let at = t0() + TimeDelta::days(1);
    let view = |i: usize| {
        let d = rows.iter().find(|d| d.id == ids[i]).unwrap();
        deadlines::assess(d, at).0
    };
    // Never read: assumed, and says so.
    let rtr = view(3);
    assert_eq!(rtr.policy_source, "assumed");
    assert_eq!(rtr.policy_reason, deadlines::NEVER_READ);
    let sw_a = view(0);
    assert_eq!(sw_a.deadline, Some(t0() + TimeDelta::days(60)), "{sw_a:?}");
    assert_eq!(
        (sw_a.policy_source.as_str(), sw_a.policy_name.as_str()),
        ("device", "Custom Policy")
    );
    assert!(!sw_a.deadline_disagrees);
    // A read taken before the last ACK Tally knows of says nothing about today's deadline.
    let mut before_ack = custom(3, t0() + TimeDelta::days(7));
    before_ack.last_ack_ms = (t0() - TimeDelta::days(80)).timestamp_millis();
    policies::read(
        &s,
        "p-0",
        proto::DevicePoliciesRead {
            devices: vec![before_ack],
        },
    )
    .await
    .unwrap();
    let rows = compliance::fleet(&mut c).await.unwrap();
    let view = |i: usize| {
        let d = rows.iter().find(|d| d.id == ids[i]).unwrap();
        deadlines::assess(d, at).0
    };
    let rtr_read = view(3);
    assert_eq!(
        (rtr_read.device_deadline, rtr_read.deadline_disagrees),
        (None, false)
    );
    let sw_b = view(2);
    assert_eq!(sw_b.deadline, Some(t0() + TimeDelta::days(60)));
    assert_eq!(sw_b.device_deadline, Some(t0() + TimeDelta::days(90)));
    assert!(sw_b.deadline_disagrees);
    let cube = view(1);
    assert_eq!(
        cube.deadline,
        Some(t0() + TimeDelta::days(90)),
        "Cisco's default"
    );
    assert_eq!(cube.policy_source, "assumed");
    assert!(cube.policy_reason.contains("RESTCONF"), "{cube:?}");
    // The stored deadline (what roll-ups and the at-risk list read) follows the policy too.
    assert_eq!(
        count(
            &s.pool,
            &format!(
                "SELECT count(*) FROM sched.devices WHERE id = '{}' AND deadline = '{}'",
                ids[0],
                (t0() + TimeDelta::days(60)).to_rfc3339()
            )
        )
        .await,
        1
    );
    // One alert, for sw-b only.
    assert_eq!(
        count(
            &s.pool,
            "SELECT count(*) FROM sched.alerts WHERE kind = 'deadline_mismatch'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &s.pool,
            &format!("SELECT count(*) FROM sched.alerts WHERE kind = 'deadline_mismatch' AND device_id = '{}' AND message LIKE '%Custom Policy%'", ids[2])
        )
        .await,
        1
    );

    // The ACK-deadline alerts of a device on an assumed policy say so; of one read, they do not.
    let e = alerts::evaluate(&s, t0() + TimeDelta::days(85))
        .await
        .unwrap();
    assert!(e.fired > 0, "{e:?}");
    assert!(
        count(
            &s.pool,
            &format!("SELECT count(*) FROM sched.alerts WHERE kind = 'ack_deadline' AND device_id = '{}' AND message LIKE '%assumes Cisco''s default policy: RESTCONF is not enabled%'", ids[1])
        )
        .await
            > 0
    );
    assert!(
        count(
            &s.pool,
            &format!("SELECT count(*) FROM sched.alerts WHERE kind = 'ack_deadline' AND device_id = '{}' AND message NOT LIKE '%assumes%'", ids[2])
        )
        .await
            > 0
    );

    // An older read never replaces a newer one.
    let mut stale = custom(0, t0() + TimeDelta::days(5));
    stale.read_at_ms = 1;
    policies::read(
        &s,
        "p-2",
        proto::DevicePoliciesRead {
            devices: vec![stale],
        },
    )
    .await
    .unwrap();
    let rows = compliance::fleet(&mut c).await.unwrap();
    let d = rows.iter().find(|d| d.id == ids[0]).unwrap();
    assert_eq!(
        deadlines::assess(d, at).0.device_deadline,
        Some(t0() + TimeDelta::days(60))
    );
}

/// A change of a device's licenses must be reported within its policy's report-on-change days:
/// with 30/60/10 the deadline moves to 10 days after the change, not 60 after the last ACK; a
/// device whose licenses did not change keeps its periodic deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_license_change_brings_the_deadline_to_the_policys_report_on_change_days() {
    use tally_renewal_scheduler::policies;
    let acked = Utc::now() - TimeDelta::days(5);
    let (_db, s, ids) = fleet_acked_at(acked).await;
    let attrs = Some(proto::PolicyAttrs {
        first_report_days: 30,
        reporting_frequency_days: 60,
        report_on_change_days: 10,
    });
    let policy = |i: usize| proto::DevicePolicy {
        device_id: ids[i].to_string(),
        source: "device".into(),
        name: "Custom 30/60/10".into(),
        ack_required: true,
        perpetual: attrs,
        subscription: attrs,
        last_ack_ms: acked.timestamp_millis(),
        read_at_ms: 1_800_000_000_000,
        ..Default::default()
    };
    policies::read(
        &s,
        "p-1",
        proto::DevicePoliciesRead {
            devices: vec![policy(0), policy(2)],
        },
    )
    .await
    .unwrap();
    // Inventory reports sw-a's new DNA tier (revision 2); sw-b is unchanged.
    let dev =
        |i: usize, host: &str, model: &str, site: &str, dna: &str, revision: i64| proto::Device {
            device_id: ids[i].to_string(),
            hostname: host.into(),
            model: model.into(),
            site: site.into(),
            smart_account: "acme".into(),
            virtual_account: "Campus".into(),
            network_license: "network-advantage".into(),
            dna_tier: dna.into(),
            revision,
            ..Default::default()
        };
    fleet::upsert(
        &s,
        "u-2",
        proto::DevicesUpserted {
            devices: vec![
                dev(0, "sw-a", "C9300-48P", "hq", "dna-essentials", 2),
                dev(2, "sw-b", "C9200-24P", "branch-01", "dna-essentials", 2),
            ],
        },
    )
    .await
    .unwrap();
    let mut c = s.pool.get().await.unwrap();
    let rows = compliance::fleet(&mut c).await.unwrap();
    let view = |i: usize| {
        let d = rows.iter().find(|d| d.id == ids[i]).unwrap();
        deadlines::assess(d, Utc::now()).0
    };
    let sw_a = view(0);
    let due = sw_a.deadline.unwrap();
    let from_change = due - Utc::now();
    assert!(
        from_change > TimeDelta::days(9) && from_change <= TimeDelta::days(10),
        "{sw_a:?}"
    );
    assert!(sw_a.reason.contains("change"), "{}", sw_a.reason);
    let sw_b = view(2);
    // Postgres keeps microseconds.
    let off = sw_b.deadline.unwrap() - (acked + TimeDelta::days(60));
    assert!(off.num_milliseconds().abs() < 1, "{sw_b:?}");
}
