//! Dry-run and commit of one bulk tier job over N devices, against real Postgres (a fresh
//! database cloned from the migrated template) and NATS. Not a test: it prints timings.
//!
//! `cargo bench -p tally-tier-assignment --bench jobs -- 100000` (needs TALLY_TEST_NATS_URL,
//! see `scripts/ensure-services`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;
use tally_bus::proto;
use tally_platform::SecretBox;
use tally_tier_assignment::{
    Config, Tiers, jobs,
    plan::{Mode, PlanRequest, Selector, Target},
    pools, projection,
};
use uuid::Uuid;

const SA: &str = "acme.example";
const MODELS: [&str; 4] = ["C9300-48P", "C9300-24P", "C9200-48P", "C9200-24P"];
const VAS: [&str; 3] = ["Campus", "Branch", "Voice"];

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    tally_platform::init_crypto();
    let db = tally_testkit::TestDb::new().await.unwrap();
    let pool = tally_store::pool(&db.url, 8).unwrap();
    let bus = tally_testkit::bus().await.unwrap();
    let secrets = SecretBox::from_secret("bench-secret-key-123");
    let sealed = secrets.seal("cisco-sim").unwrap();
    let t = Tiers::new(pool, bus, secrets, None, Config::default()).unwrap();

    // The fleet as inventory publishes it: every device on Network Advantage + DNA Essentials.
    let started = Instant::now();
    for (chunk_no, chunk) in (0..n).collect::<Vec<_>>().chunks(1000).enumerate() {
        let devices = chunk
            .iter()
            .map(|&i| proto::Device {
                device_id: Uuid::from_u128(i as u128 + 1).to_string(),
                udi_pid: MODELS[i % 4].into(),
                udi_serial: format!("FCW{i:08}"),
                hostname: format!("sw-{i:06}"),
                model: MODELS[i % 4].into(),
                software_version: "17.9.4a".into(),
                base_url: format!("http://127.0.0.1:9/d/{i}"),
                site: format!("site-{:03}", i % 200),
                smart_account: SA.into(),
                virtual_account: VAS[i % 3].into(),
                username: "admin".into(),
                password_sealed: sealed.clone(),
                is_cube: false,
                network_license: "network-advantage".into(),
                dna_tier: "dna-essentials".into(),
                revision: 1,
                groups: vec!["access".into()],
                voice_role: String::new(),
            })
            .collect();
        projection::upsert(
            &t,
            &format!("bench-{chunk_no}"),
            proto::DevicesUpserted { devices },
        )
        .await
        .unwrap();
    }
    let projected = started.elapsed();

    // Pools with room for every device.
    let mut licenses = Vec::new();
    for l in tally_domain::rules::Rules::defaults().licenses {
        for va in VAS {
            licenses.push(tally_cssm::License {
                license: l.name.clone(),
                virtual_account: va.into(),
                quantity: n as i64,
                in_use: 0,
                available: n as i64,
                status: "In Compliance".into(),
                license_details: vec![],
            });
        }
    }
    let mut c = t.pool.get().await.unwrap();
    pools::store_pools(&mut c, SA, &licenses).await.unwrap();

    let req = PlanRequest {
        select: Selector {
            model: Some("*".into()),
            ..Selector::default()
        },
        target: Target {
            dna_tier: Some("dna-advantage".into()),
            ..Target::default()
        },
        mode: Mode::AllOrNothing,
        expect_fingerprint: None,
    };
    let target = req.validate().unwrap();
    let mut dry = Vec::new();
    let mut plan = None;
    for _ in 0..3 {
        let s = Instant::now();
        plan = Some(jobs::compute(&mut c, &req, &target).await.unwrap());
        dry.push(s.elapsed().as_secs_f64());
    }
    let plan = plan.unwrap();
    assert_eq!(plan.changes.len(), n, "every device changes");
    assert!(plan.executable);
    dry.sort_by(f64::total_cmp);

    let s = Instant::now();
    let created = jobs::create(&t, &req, &target, Some("bench"), "bench")
        .await
        .unwrap();
    let commit = s.elapsed().as_secs_f64();
    assert_eq!(created.job.devices_total as usize, n);
    assert_eq!(created.job.fingerprint, plan.fingerprint);

    println!("devices: {n}");
    println!(
        "projection of {n} devices (1000 per event): {:.2} s",
        projected.as_secs_f64()
    );
    println!(
        "dry-run (validate, pool impact, {} changes): median {:.2} s (runs: {})",
        plan.changes.len(),
        dry[1],
        dry.iter()
            .map(|d| format!("{d:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "job commit (validate again under the lock + write job, items, ledger): {commit:.2} s"
    );
    println!("dry-run + commit: {:.2} s", dry[1] + commit);
    println!(
        "bench process peak RSS: {:.0} MiB",
        tally_platform::metrics::peak_rss_mib()
    );
}
