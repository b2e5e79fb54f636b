//! The planner: what a tier request would change, the pool impact, and every violation. It is a
//! pure function of the devices, the rules and the pools, so a dry-run and the job that follows
//! compute exactly the same thing (the job recomputes it under the commit lock).

mod request;

pub use request::{Mode, ParsedTarget, PlanRequest, Selector, Target};

use crate::store::DeviceState;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use tally_domain::{
    DnaTier, NetworkLicense,
    rules::{DeviceFacts, Rules, Violation, Wanted},
};
use utoipa::ToSchema;
use uuid::Uuid;

/// A device as the planner sees it: the facts the rules need and what it holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceView {
    pub id: Uuid,
    pub hostname: String,
    pub model: String,
    pub software_version: String,
    pub state: DeviceState,
    pub current: Levels,
}

/// The levels a device holds, its virtual account and the pools (license names) it draws from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct Levels {
    pub smart_account: String,
    pub virtual_account: String,
    pub network_license: String,
    pub dna_tier: Option<String>,
    pub network_pool: Option<String>,
    pub dna_pool: Option<String>,
}

/// (smart account, virtual account, license)
pub type PoolKey = (String, String, String);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Change {
    pub device_id: Uuid,
    pub hostname: String,
    pub from: Levels,
    pub to: Levels,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Rejection {
    pub device_id: Uuid,
    pub hostname: String,
    #[schema(value_type = Vec<Object>)]
    pub violations: Vec<Violation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolImpact {
    pub smart_account: String,
    pub virtual_account: String,
    pub license: String,
    /// Purchased, as CSSM last listed it; absent if CSSM lists no such pool.
    pub quantity: Option<i64>,
    /// Devices holding it in Tally's ledger before the change.
    pub held_before: i64,
    pub draws: i64,
    pub releases: i64,
    pub held_after: i64,
    pub available_after: Option<i64>,
    pub overcommitted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Plan {
    pub mode: Mode,
    /// True when a job with this request would be accepted.
    pub executable: bool,
    /// SHA-256 over the changes; pass it as `expect_fingerprint` to make sure a job does
    /// exactly what this dry-run showed.
    pub fingerprint: String,
    pub selected: usize,
    pub unchanged: usize,
    pub changes: Vec<Change>,
    pub rejected: Vec<Rejection>,
    pub pools: Vec<PoolImpact>,
}

pub struct PlanInput<'a> {
    pub rules: &'a Rules,
    pub devices: &'a [DeviceView],
    /// Purchased quantity per pool, as synced from CSSM.
    pub quantity: &'a HashMap<PoolKey, i64>,
    /// Devices holding each pool in the ledger now.
    pub held: &'a HashMap<PoolKey, i64>,
    pub target: &'a ParsedTarget,
    pub mode: Mode,
}

tally_store::text_enum! {
    /// The violation codes the planner adds to those of the rules.
    pub enum PlanCode {
        /// The device's current levels are not levels Tally knows.
        UnknownLevel = "unknown-level",
        DeviceBusy = "device-busy",
        PoolUnknown = "pool-unknown",
        PoolOvercommit = "pool-overcommit",
    }
}

struct Candidate {
    change: Change,
    draws: Vec<PoolKey>,
    releases: Vec<PoolKey>,
}

fn key(sa: &str, va: &str, license: &str) -> PoolKey {
    (sa.to_owned(), va.to_owned(), license.to_owned())
}

/// What the planner makes of one device.
// Each value is moved into a list right away; boxing the large variant would only add an
// allocation per device.
#[allow(clippy::large_enum_variant)]
enum Assessed {
    Unchanged,
    Rejected(Rejection),
    Candidate(Candidate),
}

fn rejection(d: &DeviceView, violations: Vec<Violation>) -> Rejection {
    Rejection {
        device_id: d.id,
        hostname: d.hostname.clone(),
        violations,
    }
}

pub fn plan(input: &PlanInput<'_>) -> Plan {
    let mut unchanged = 0;
    let mut rejected = Vec::new();
    // Sized up front: at 100,000 devices, growing a list of candidates copies it many times over.
    let mut candidates = Vec::with_capacity(input.devices.len());
    for d in input.devices {
        match assess(input, d) {
            Assessed::Unchanged => unchanged += 1,
            Assessed::Rejected(r) => rejected.push(r),
            Assessed::Candidate(c) => candidates.push(c),
        }
    }
    let (changes, impact) = admit(input, candidates, &mut rejected);
    let pools = pool_impact(input, impact);
    rejected.sort_by(|a, b| (&a.hostname, a.device_id).cmp(&(&b.hostname, b.device_id)));
    let executable = match input.mode {
        Mode::AllOrNothing => rejected.is_empty(),
        Mode::BestEffort => true,
    };
    Plan {
        mode: input.mode,
        executable,
        fingerprint: fingerprint(&changes),
        selected: input.devices.len(),
        unchanged,
        changes,
        rejected,
        pools,
    }
}

/// The levels the device would end up with, checked against the rules and the pools it would
/// draw on (whether they have room is left to [`admit`]).
fn assess(input: &PlanInput<'_>, d: &DeviceView) -> Assessed {
    let t = input.target;
    let cur = &d.current;
    let mut violations = Vec::new();
    let network = match t.network {
        Some(n) => Some(n),
        None => cur.network_license.parse::<NetworkLicense>().ok(),
    };
    let dna = match t.dna {
        Some(d) => Ok(d),
        None => cur
            .dna_tier
            .as_deref()
            .map(str::parse::<DnaTier>)
            .transpose(),
    };
    let (Some(network), Ok(dna)) = (network, dna) else {
        return Assessed::Rejected(rejection(
            d,
            vec![Violation::new(
                PlanCode::UnknownLevel.as_str(),
                "inventory",
                format!(
                    "the device's current levels ({} / {}) are not known levels; fix it in inventory",
                    cur.network_license,
                    cur.dna_tier.as_deref().unwrap_or("none")
                ),
            )],
        ));
    };
    let va = t
        .virtual_account
        .clone()
        .unwrap_or_else(|| cur.virtual_account.clone());
    // A device waiting for its reload may be given another level (its configuration is
    // simply replaced); one whose push is in flight may not.
    if d.state == DeviceState::Applying {
        violations.push(Violation::new(
            PlanCode::DeviceBusy.as_str(),
            "one job per device at a time",
            "an earlier job is configuring the device right now; wait for it or cancel it",
        ));
    }
    let facts = DeviceFacts {
        model: &d.model,
        software_version: &d.software_version,
    };
    let wanted = Wanted {
        network,
        dna,
        dna_license: t.dna_license.as_deref(),
    };
    let holdings = match input.rules.check(facts, wanted) {
        Ok(h) => Some(h),
        Err(v) => {
            violations.extend(v);
            None
        }
    };
    let to = Levels {
        smart_account: cur.smart_account.clone(),
        virtual_account: va,
        network_license: network.to_string(),
        dna_tier: dna.map(|d| d.to_string()),
        network_pool: holdings.map(|h| h.network.name.clone()),
        dna_pool: holdings.and_then(|h| h.dna.map(|l| l.name.clone())),
    };
    if violations.is_empty() && &to == cur {
        return Assessed::Unchanged;
    }
    if !violations.is_empty() {
        return Assessed::Rejected(rejection(d, violations));
    }
    let (draws, releases) = pool_moves(cur, &to);
    let unknown = unknown_pools(input, &draws);
    if !unknown.is_empty() {
        return Assessed::Rejected(rejection(d, unknown));
    }
    Assessed::Candidate(Candidate {
        change: Change {
            device_id: d.id,
            hostname: d.hostname.clone(),
            from: cur.clone(),
            to,
        },
        draws,
        releases,
    })
}

/// The pools a change draws on and releases: a pool is drawn when the device holds a license it
/// did not hold before (another license or another virtual account), and the old one is
/// released.
fn pool_moves(cur: &Levels, to: &Levels) -> (Vec<PoolKey>, Vec<PoolKey>) {
    let mut draws = Vec::new();
    let mut releases = Vec::new();
    let same_account =
        cur.smart_account == to.smart_account && cur.virtual_account == to.virtual_account;
    for (old, new) in [
        (&cur.network_pool, &to.network_pool),
        (&cur.dna_pool, &to.dna_pool),
    ] {
        // Compared before any key is built: most devices keep most of their pools.
        if same_account && old == new {
            continue;
        }
        draws.extend(
            new.as_ref()
                .map(|l| key(&to.smart_account, &to.virtual_account, l)),
        );
        releases.extend(
            old.as_ref()
                .map(|l| key(&cur.smart_account, &cur.virtual_account, l)),
        );
    }
    (draws, releases)
}

/// One violation per drawn pool CSSM does not list.
fn unknown_pools(input: &PlanInput<'_>, draws: &[PoolKey]) -> Vec<Violation> {
    draws
        .iter()
        .filter(|k| !input.quantity.contains_key(*k))
        .map(|(_, va, l)| {
            Violation::new(
                PlanCode::PoolUnknown.as_str(),
                format!("pool {l} in {va}"),
                format!(
                    "CSSM lists no {l} licenses in virtual account {va}; deposit them there or sync the pools"
                ),
            )
        })
        .collect()
}

/// Draws and releases per pool, of the admitted changes.
type Impact = BTreeMap<PoolKey, (i64, i64)>;

/// Adds `n` to a pool's count; the key is only copied the first time the pool is seen.
fn bump(counts: &mut HashMap<PoolKey, i64>, k: &PoolKey, n: i64) {
    match counts.get_mut(k) {
        Some(v) => *v += n,
        None => {
            counts.insert(k.clone(), n);
        }
    }
}

/// Admits candidates in order while every pool they draw on has room; the others are rejected,
/// naming the full pools. Releases make no room here: a device that fails or is cancelled takes
/// its old license back, so a release only counts once the job can no longer undo it (see
/// `store::held`).
fn admit(
    input: &PlanInput<'_>,
    candidates: Vec<Candidate>,
    rejected: &mut Vec<Rejection>,
) -> (Vec<Change>, Impact) {
    let mut running: HashMap<PoolKey, i64> = input.held.clone();
    let mut admitted = vec![false; candidates.len()];
    for (i, c) in candidates.iter().enumerate() {
        let fits = c.draws.iter().all(|k| {
            running.get(k).copied().unwrap_or(0) < input.quantity.get(k).copied().unwrap_or(0)
        });
        if fits {
            for k in &c.draws {
                bump(&mut running, k, 1);
            }
            admitted[i] = true;
        }
    }
    let mut impact = Impact::new();
    let mut changes = Vec::with_capacity(candidates.len());
    for (c, ok) in candidates.into_iter().zip(admitted) {
        if ok {
            for k in &c.draws {
                match impact.get_mut(k) {
                    Some(v) => v.0 += 1,
                    None => {
                        impact.insert(k.clone(), (1, 0));
                    }
                }
            }
            for k in &c.releases {
                match impact.get_mut(k) {
                    Some(v) => v.1 += 1,
                    None => {
                        impact.insert(k.clone(), (0, 1));
                    }
                }
            }
            changes.push(c.change);
            continue;
        }
        let violations = c
            .draws
            .iter()
            .filter(|k| {
                running.get(*k).copied().unwrap_or(0) >= input.quantity.get(*k).copied().unwrap_or(0)
            })
            .map(|k| {
                let (_, va, l) = k;
                let q = input.quantity.get(k).copied().unwrap_or(0);
                let held = input.held.get(k).copied().unwrap_or(0);
                Violation::new(
                    PlanCode::PoolOvercommit.as_str(),
                    format!("pool {l} in {va}"),
                    format!(
                        "{q} purchased, {held} held before this request; no license left for this device"
                    ),
                )
            })
            .collect();
        rejected.push(Rejection {
            device_id: c.change.device_id,
            hostname: c.change.hostname,
            violations,
        });
    }
    (changes, impact)
}

/// Every pool the admitted changes draw on or release, before and after; also the pools a
/// request touches without changing their count.
fn pool_impact(input: &PlanInput<'_>, impact: Impact) -> Vec<PoolImpact> {
    impact
        .into_iter()
        .map(|(k, (draws, releases))| {
            let quantity = input.quantity.get(&k).copied();
            let held_before = input.held.get(&k).copied().unwrap_or(0);
            let held_after = held_before + draws - releases;
            PoolImpact {
                smart_account: k.0,
                virtual_account: k.1,
                license: k.2,
                quantity,
                held_before,
                draws,
                releases,
                held_after,
                available_after: quantity.map(|q| q - held_after),
                overcommitted: quantity.is_none_or(|q| held_after > q),
            }
        })
        .collect()
}

/// SHA-256 over each change's device and target levels, in order.
pub fn fingerprint(changes: &[Change]) -> String {
    let mut h = Sha256::new();
    for c in changes {
        h.update(c.device_id.as_bytes());
        for v in [
            Some(&c.to.virtual_account),
            Some(&c.to.network_license),
            c.to.dna_tier.as_ref(),
            c.to.network_pool.as_ref(),
            c.to.dna_pool.as_ref(),
        ] {
            h.update(v.map_or("-", String::as_str).as_bytes());
            h.update([0]);
        }
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SA: &str = "acme";

    fn device(i: u32, model: &str, dna: Option<&str>, va: &str) -> DeviceView {
        let rules = Rules::defaults();
        let dna_pool = dna.map(|d| {
            rules
                .license_for(model, tally_domain::rules::Level::Dna(d.parse().unwrap()))
                .unwrap()
                .name
                .clone()
        });
        let network_pool = rules
            .license_for(
                model,
                tally_domain::rules::Level::Network(NetworkLicense::NetworkAdvantage),
            )
            .map(|l| l.name.clone());
        DeviceView {
            id: Uuid::from_u128(u128::from(i)),
            hostname: format!("sw-{i:05}"),
            model: model.into(),
            software_version: "17.9.4a".into(),
            state: DeviceState::Active,
            current: Levels {
                smart_account: SA.into(),
                virtual_account: va.into(),
                network_license: "network-advantage".into(),
                dna_tier: dna.map(str::to_owned),
                network_pool,
                dna_pool,
            },
        }
    }

    fn held_of(devices: &[DeviceView]) -> HashMap<PoolKey, i64> {
        let mut held = HashMap::new();
        for d in devices {
            for p in [&d.current.network_pool, &d.current.dna_pool]
                .into_iter()
                .flatten()
            {
                *held
                    .entry(key(SA, &d.current.virtual_account, p))
                    .or_insert(0) += 1;
            }
        }
        held
    }

    fn target(dna: &str) -> ParsedTarget {
        ParsedTarget {
            network: None,
            dna: Some(dna.parse().ok()),
            virtual_account: None,
            dna_license: None,
        }
    }

    fn run(
        devices: &[DeviceView],
        quantity: &HashMap<PoolKey, i64>,
        t: &ParsedTarget,
        mode: Mode,
    ) -> Plan {
        let rules = Rules::defaults();
        let held = held_of(devices);
        plan(&PlanInput {
            rules: &rules,
            devices,
            quantity,
            held: &held,
            target: t,
            mode,
        })
    }

    fn adv48() -> PoolKey {
        key(SA, "Campus", "C9300 DNA Advantage, 48-port, 3Y")
    }

    #[test]
    fn overcommit_is_refused_and_best_effort_takes_what_fits() {
        let devices: Vec<_> = (0..10)
            .map(|i| device(i, "C9300-48P", Some("dna-essentials"), "Campus"))
            .collect();
        let quantity = HashMap::from([(adv48(), 6)]);
        let aon = run(
            &devices,
            &quantity,
            &target("dna-advantage"),
            Mode::AllOrNothing,
        );
        assert!(!aon.executable);
        assert_eq!(aon.rejected.len(), 4);
        assert_eq!(aon.rejected[0].violations[0].code, "pool-overcommit");
        let be = run(
            &devices,
            &quantity,
            &target("dna-advantage"),
            Mode::BestEffort,
        );
        assert!(be.executable);
        assert_eq!(be.changes.len(), 6);
        let p = be
            .pools
            .iter()
            .find(|p| p.license.contains("Advantage, 48"))
            .unwrap();
        assert_eq!((p.held_before, p.draws, p.held_after), (0, 6, 6));
        assert_eq!(p.available_after, Some(0));
        assert!(!p.overcommitted);
        let released = be
            .pools
            .iter()
            .find(|p| p.license.contains("Essentials, 48"))
            .unwrap();
        assert_eq!(released.releases, 6);
    }

    #[test]
    fn fingerprint_follows_the_changes() {
        let devices: Vec<_> = (0..4)
            .map(|i| device(i, "C9300-48P", Some("dna-essentials"), "Campus"))
            .collect();
        let t = target("dna-advantage");
        let a = run(
            &devices,
            &HashMap::from([(adv48(), 4)]),
            &t,
            Mode::BestEffort,
        );
        let b = run(
            &devices,
            &HashMap::from([(adv48(), 4)]),
            &t,
            Mode::BestEffort,
        );
        let c = run(
            &devices,
            &HashMap::from([(adv48(), 3)]),
            &t,
            Mode::BestEffort,
        );
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_ne!(a.fingerprint, c.fingerprint);
    }

    #[test]
    fn wrong_model_license_is_refused_with_the_rule() {
        let devices = vec![device(1, "C9300-48P", Some("dna-essentials"), "Campus")];
        let quantity = HashMap::from([(adv48(), 10)]);
        let mut t = target("dna-advantage");
        t.dna_license = Some("C9300 DNA Advantage, 24-port, 3Y".into());
        let p = run(&devices, &quantity, &t, Mode::AllOrNothing);
        assert!(!p.executable);
        let v = &p.rejected[0].violations[0];
        assert_eq!(v.code, "license-model");
        assert!(v.rule.contains("C9300-24*"));
    }

    #[test]
    fn unknown_pool_and_busy_device_are_named() {
        let mut devices = vec![
            device(1, "C9300-48P", Some("dna-essentials"), "Campus"),
            device(2, "C9300-48P", Some("dna-essentials"), "Campus"),
        ];
        devices[1].state = DeviceState::Applying;
        let p = run(
            &devices,
            &HashMap::new(),
            &target("dna-advantage"),
            Mode::BestEffort,
        );
        assert_eq!(p.changes.len(), 0);
        assert_eq!(p.rejected[0].violations[0].code, "pool-unknown");
        assert_eq!(p.rejected[1].violations[0].code, "device-busy");
    }

    #[test]
    fn moving_virtual_account_draws_there_and_releases_here() {
        let devices = vec![device(1, "C9300-48P", Some("dna-advantage"), "Campus")];
        let branch = key(SA, "Branch", "C9300 DNA Advantage, 48-port, 3Y");
        let branch_net = key(SA, "Branch", "C9300 Network Advantage, 48-port");
        let quantity = HashMap::from([(branch, 1), (branch_net, 1)]);
        let t = ParsedTarget {
            network: None,
            dna: None,
            virtual_account: Some("Branch".into()),
            dna_license: None,
        };
        let p = run(&devices, &quantity, &t, Mode::AllOrNothing);
        assert!(p.executable, "{:?}", p.rejected);
        assert_eq!(p.changes[0].to.virtual_account, "Branch");
        let draws: i64 = p.pools.iter().map(|p| p.draws).sum();
        let releases: i64 = p.pools.iter().map(|p| p.releases).sum();
        assert_eq!((draws, releases), (2, 2));
    }

    #[test]
    fn request_validation_names_fields() {
        let r = PlanRequest {
            select: Selector::default(),
            target: Target {
                dna_tier: Some("dna-gold".into()),
                dna_license: None,
                ..Target::default()
            },
            mode: Mode::BestEffort,
            expect_fingerprint: None,
        };
        let e = r.validate().unwrap_err();
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["select", "target.dna_tier"]);
    }

    proptest! {
        /// Whatever the fleet and the pools, an executed plan never leaves a pool it draws on
        /// above its quantity, and every device is either changed, unchanged or rejected.
        #[test]
        fn plans_never_overcommit(
            tiers in proptest::collection::vec(0usize..4, 1..60),
            q_adv in 0i64..30, q_ess in 0i64..30, q_pre in 0i64..30,
            want in 0usize..4,
        ) {
            let names = [None, Some("dna-essentials"), Some("dna-advantage"), Some("dna-premier")];
            let devices: Vec<_> = tiers.iter().enumerate()
                .map(|(i, t)| device(i as u32, "C9300-48P", names[*t], "Campus")).collect();
            let quantity = HashMap::from([
                (adv48(), q_adv),
                (key(SA, "Campus", "C9300 DNA Essentials, 48-port, 3Y"), q_ess),
                (key(SA, "Campus", "C9300 DNA Premier, 48-port, 3Y"), q_pre),
                (key(SA, "Campus", "C9300 Network Advantage, 48-port"), 1000),
            ]);
            let t = target(names[want].unwrap_or("none"));
            let p = run(&devices, &quantity, &t, Mode::BestEffort);
            prop_assert_eq!(p.changes.len() + p.unchanged + p.rejected.len(), devices.len());
            for pool in &p.pools {
                if pool.draws > 0 {
                    prop_assert!(pool.held_after <= pool.quantity.unwrap(), "{:?}", pool);
                }
            }
        }
    }
}
