#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Cycle starts (on demand and per cron tick) and the counters that close a cycle.

mod common;

use common::scheduler;
use diesel::sql_types::{Int4, Text};
use diesel_async::RunQueryDsl;
use prost::Message;
use tally_bus::proto;
use tally_renewal_scheduler::{Scheduler, cycles};
use tally_testkit::count;
use uuid::Uuid;

#[derive(diesel::QueryableByName, Debug)]
struct CycleRow {
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Int4)]
    devices: i32,
    #[diesel(sql_type = Int4)]
    devices_ok: i32,
    #[diesel(sql_type = Int4)]
    devices_with_reports: i32,
    #[diesel(sql_type = Int4)]
    acks_imported: i32,
}

async fn cycle(s: &Scheduler, id: Uuid) -> CycleRow {
    let mut c = s.pool.get().await.unwrap();
    let rows: Vec<CycleRow> = diesel::sql_query(
        "SELECT state, devices, devices_ok, devices_with_reports, acks_imported FROM sched.cycles WHERE id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .load(&mut c)
    .await
    .unwrap();
    rows.into_iter().next().expect("cycle row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_start_is_refused_while_one_runs() {
    let (_db, s) = scheduler().await;
    let first = cycles::start(&s, "api", None).await.unwrap().unwrap();
    match cycles::start(&s, "api", None).await {
        Err(cycles::StartError::Running(id)) => assert_eq!(id, first),
        other => panic!("expected Running({first}), got {other:?}"),
    }
    assert_eq!(count(&s.pool, "SELECT count(*) FROM sched.cycles").await, 1);
    // One CycleStarted in the outbox, for the first cycle.
    let mut c = s.pool.get().await.unwrap();
    #[derive(diesel::QueryableByName)]
    struct Out {
        #[diesel(sql_type = Text)]
        subject: String,
        #[diesel(sql_type = diesel::sql_types::Bytea)]
        payload: Vec<u8>,
    }
    let out: Vec<Out> = diesel::sql_query("SELECT subject, payload FROM sched.outbox")
        .load(&mut c)
        .await
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].subject, "sched.cycle.started");
    let ev = proto::CycleStarted::decode(out[0].payload.as_slice()).unwrap();
    assert_eq!(ev.cycle_id, first.to_string());
    assert_eq!(ev.trigger, "api");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_on_demand_starts_start_one_cycle() {
    let (_db, s) = scheduler().await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let s = s.clone();
        set.spawn(async move { cycles::start(&s, "api", None).await });
    }
    let mut started = 0;
    let mut refused = 0;
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            Ok(Some(_)) => started += 1,
            Err(cycles::StartError::Running(_)) => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((started, refused), (1, 3));
    assert_eq!(count(&s.pool, "SELECT count(*) FROM sched.cycles").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_tick_fires_once() {
    let (_db, s) = scheduler().await;
    let tick = chrono::DateTime::parse_from_rfc3339("2026-03-01T03:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let first = cycles::start(&s, "schedule", Some(tick)).await.unwrap();
    assert!(first.is_some());
    let second = cycles::start(&s, "schedule", Some(tick)).await.unwrap();
    assert_eq!(second, None);
    assert_eq!(count(&s.pool, "SELECT count(*) FROM sched.cycles").await, 1);
    assert_eq!(count(&s.pool, "SELECT count(*) FROM sched.outbox").await, 1);
    // A tick while a cycle still runs is skipped, saying which cycle runs: one at a time.
    let week = chrono::Duration::days(7);
    let skipped = cycles::start(&s, "schedule", Some(tick + week)).await;
    assert!(
        matches!(skipped, Err(cycles::StartError::Running(id)) if Some(id) == first),
        "{skipped:?}"
    );
    assert_eq!(count(&s.pool, "SELECT count(*) FROM sched.cycles").await, 1);
    // Once it finished, the next tick is a new cycle.
    {
        use diesel_async::RunQueryDsl;
        let mut c = s.pool.get().await.unwrap();
        diesel::sql_query("UPDATE sched.cycles SET state = 'complete'")
            .execute(&mut c)
            .await
            .unwrap();
    }
    let next = cycles::start(&s, "schedule", Some(tick + week + week))
        .await
        .unwrap();
    assert!(next.is_some());
    assert_ne!(next, first);
    assert_eq!(count(&s.pool, "SELECT count(*) FROM sched.cycles").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_close_the_cycle_once_each() {
    let (_db, s) = scheduler().await;
    let id = cycles::start(&s, "api", None).await.unwrap().unwrap();
    let cid = id.to_string();
    let devices: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();

    cycles::apply(
        &s,
        "m-1",
        proto::CollectionStarted {
            cycle_id: cid.clone(),
            devices: 3,
        }
        .into(),
    )
    .await
    .unwrap();
    // Redelivered: counted once.
    cycles::apply(
        &s,
        "m-2",
        proto::CollectionProgress {
            cycle_id: cid.clone(),
            devices_ok: 3,
            devices_with_reports: 3,
            ..Default::default()
        }
        .into(),
    )
    .await
    .unwrap();
    cycles::apply(
        &s,
        "m-2",
        proto::CollectionProgress {
            cycle_id: cid.clone(),
            devices_ok: 3,
            devices_with_reports: 3,
            ..Default::default()
        }
        .into(),
    )
    .await
    .unwrap();
    let c = cycle(&s, id).await;
    assert_eq!(
        (
            c.state.as_str(),
            c.devices,
            c.devices_ok,
            c.devices_with_reports
        ),
        ("running", 3, 3, 3),
        "waiting for ACKs: {c:?}"
    );

    cycles::apply(
        &s,
        "m-3",
        proto::AcksImported {
            cycle_id: cid.clone(),
            ok: 2,
            ok_devices: devices[..2].iter().map(Uuid::to_string).collect(),
            ..Default::default()
        }
        .into(),
    )
    .await
    .unwrap();
    assert_eq!(cycle(&s, id).await.state, "running");
    cycles::apply(
        &s,
        "m-4",
        proto::AcksImported {
            cycle_id: cid.clone(),
            ok: 1,
            ok_devices: devices[2..3].iter().map(Uuid::to_string).collect(),
            ..Default::default()
        }
        .into(),
    )
    .await
    .unwrap();
    // Same message again after completion: no change.
    cycles::apply(
        &s,
        "m-4",
        proto::AcksImported {
            cycle_id: cid.clone(),
            ok: 1,
            ok_devices: devices[2..3].iter().map(Uuid::to_string).collect(),
            ..Default::default()
        }
        .into(),
    )
    .await
    .unwrap();
    let c = cycle(&s, id).await;
    assert_eq!(c.state, "complete", "{c:?}");
    assert_eq!(c.acks_imported, 3);
    assert_eq!(c.devices_ok, 3);
    assert_eq!(
        count(
            &s.pool,
            "SELECT count(*) FROM sched.cycles WHERE finished_at IS NOT NULL"
        )
        .await,
        1
    );

    // With the cycle complete, a new on-demand cycle may start.
    assert!(cycles::start(&s, "api", None).await.unwrap().is_some());
}

/// A device whose reports went to CSSM in two batches gets two ACKs; when one import slice
/// installs both, its `AcksImported` names the device twice. The cycle counts the device once and
/// still closes (the event used to fail for good, "ON CONFLICT DO UPDATE command cannot affect row
/// a second time", and was redelivered forever: the cycle never completed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_naming_a_device_twice_counts_it_once() {
    let (_db, s) = scheduler().await;
    let id = cycles::start(&s, "api", None).await.unwrap().unwrap();
    let cid = id.to_string();
    let (twice, other) = (Uuid::now_v7(), Uuid::now_v7());
    for (msg, update) in [
        (
            "m-1",
            cycles::Update::from(proto::CollectionStarted {
                cycle_id: cid.clone(),
                devices: 2,
            }),
        ),
        (
            "m-2",
            proto::CollectionProgress {
                cycle_id: cid.clone(),
                devices_ok: 2,
                devices_with_reports: 2,
                ..Default::default()
            }
            .into(),
        ),
        (
            "m-3",
            proto::AcksImported {
                cycle_id: cid.clone(),
                ok: 2,
                ok_devices: vec![twice.to_string(), twice.to_string()],
                ..Default::default()
            }
            .into(),
        ),
    ] {
        cycles::apply(&s, msg, update).await.unwrap();
    }
    let c = cycle(&s, id).await;
    assert_eq!((c.state.as_str(), c.acks_imported), ("running", 1), "{c:?}");
    cycles::apply(
        &s,
        "m-4",
        proto::AcksImported {
            cycle_id: cid.clone(),
            ok: 2,
            ok_devices: vec![other.to_string(), other.to_string()],
            ..Default::default()
        }
        .into(),
    )
    .await
    .unwrap();
    let c = cycle(&s, id).await;
    assert_eq!(
        (c.state.as_str(), c.acks_imported),
        ("complete", 2),
        "{c:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_complete_with_errors() {
    let (_db, s) = scheduler().await;
    let id = cycles::start(&s, "api", None).await.unwrap().unwrap();
    let cid = id.to_string();
    let devices: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    let bad = Uuid::new_v4();
    cycles::apply(
        &s,
        "a",
        proto::CollectionStarted {
            cycle_id: cid.clone(),
            devices: 2,
        }
        .into(),
    )
    .await
    .unwrap();
    cycles::apply(
        &s,
        "b",
        proto::CollectionProgress {
            cycle_id: cid.clone(),
            devices_ok: 1,
            devices_failed: 1,
            devices_with_reports: 1,
            failures: vec![proto::DeviceFailure {
                device_id: bad.to_string(),
                reason: "device timed out".into(),
            }],
            ..Default::default()
        }
        .into(),
    )
    .await
    .unwrap();
    cycles::apply(
        &s,
        "c",
        proto::AcksImported {
            cycle_id: cid.clone(),
            ok: 1,
            ok_devices: devices[2..3].iter().map(Uuid::to_string).collect(),
            ..Default::default()
        }
        .into(),
    )
    .await
    .unwrap();
    assert_eq!(cycle(&s, id).await.state, "complete_with_errors");
    assert_eq!(
        count(
            &s.pool,
            &format!(
                "SELECT count(*) FROM sched.cycle_failures WHERE device_id = '{bad}' \
                 AND stage = 'collection' AND reason = 'device timed out'"
            )
        )
        .await,
        1
    );
    // Events of no cycle (manual uploads) are ignored without error.
    cycles::apply(
        &s,
        "d",
        proto::CollectionProgress {
            devices_ok: 5,
            ..Default::default()
        }
        .into(),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_copy_records_uploads_and_installed_acks() {
    use tally_renewal_scheduler::fleet;
    let (_db, s) = scheduler().await;
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    let device = |id: &Uuid, rev: i64| proto::Device {
        device_id: id.to_string(),
        hostname: format!("cube-{id}"),
        model: "ISR4331".into(),
        smart_account: "acme".into(),
        virtual_account: "Voice".into(),
        network_license: "network-advantage".into(),
        is_cube: true,
        revision: rev,
        ..Default::default()
    };
    let ev = proto::DevicesUpserted {
        devices: ids.iter().map(|id| device(id, 1)).collect(),
    };
    fleet::upsert(&s, "up-1", ev.clone()).await.unwrap();
    fleet::upsert(&s, "up-1", ev).await.unwrap();
    assert_eq!(
        count(&s.pool, "SELECT count(*) FROM sched.devices").await,
        3
    );
    // An ACK bundle imported outside any cycle still restarts the devices' deadlines.
    let acks = proto::AcksImported {
        cycle_id: String::new(),
        ok: 2,
        ok_devices: vec![ids[0].to_string(), ids[1].to_string()],
        ..Default::default()
    };
    cycles::apply(&s, "ack-1", cycles::Update::from(acks))
        .await
        .unwrap();
    assert_eq!(
        count(
            &s.pool,
            "SELECT count(*) FROM sched.devices WHERE last_ack_at IS NOT NULL"
        )
        .await,
        2
    );
    let received = proto::AcksReceived {
        acks: vec![proto::DeviceAck {
            device_id: ids[2].to_string(),
            ..Default::default()
        }],
        source: "online".into(),
    };
    fleet::acks_received(&s, "rcv-1", received).await.unwrap();
    assert_eq!(
        count(
            &s.pool,
            "SELECT count(*) FROM sched.devices WHERE last_upload_at IS NOT NULL"
        )
        .await,
        1
    );
    // Deleted stays deleted, even if an older update arrives late with a higher revision.
    fleet::delete(
        &s,
        "del-1",
        proto::DevicesDeleted {
            device_ids: vec![ids[0].to_string()],
        },
    )
    .await
    .unwrap();
    fleet::upsert(
        &s,
        "up-2",
        proto::DevicesUpserted {
            devices: vec![device(&ids[0], 2)],
        },
    )
    .await
    .unwrap();
    assert_eq!(
        count(&s.pool, "SELECT count(*) FROM sched.devices WHERE deleted").await,
        1
    );
}
