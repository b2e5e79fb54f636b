//! CSSM simulator (slp-reference section 4): OAuth2 client credentials, `reportusage` with
//! signature and duplicate checks, `poll` returning signed ACKs after a processing delay, the
//! licenses listing, and the offline usage bundle exchange. Test hooks under `/sim/*` read and
//! change the license pools, so drift and overcommit can be staged.

use crate::ack::{AckBody, build_ack_document_with_policy};
use crate::common::{SimError, basic_credentials, bearer_token, io_err, now_secs};
use crate::fleet::{FleetConfig, profile};
use crate::yang_state::SimPolicy;
use actix_web::{
    App, HttpRequest, HttpResponse, HttpServer,
    dev::{Server, ServerHandle},
    web,
};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use serde_json::{json, value::RawValue};
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tally_domain::{
    Udi,
    bundle::{AckBundle, DeviceFile, UsageBundle},
    rules::{Level, Rules},
    rum::{inspect_report, parse_envelope},
    sign::{Signer, verify_b64},
};

/// Largest `reportusage` body.
pub const MAX_REPORTUSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Largest offline usage bundle.
pub const MAX_BUNDLE_BYTES: usize = 512 * 1024 * 1024;
const API: &str = "/services/api/smart-accounts-and-licensing";
const ACK_KEY_ID: &str = "cssm-sim-1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SmartAccount {
    pub name: String,
    pub id: String,
    pub domain: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VirtualAccount {
    pub name: String,
    pub id: String,
}

/// One license pool of a virtual account, as `v1/accounts/{domain}/licenses` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LicensePool {
    pub license: String,
    pub virtual_account: String,
    pub quantity: i64,
    pub in_use: i64,
    /// TERM, PERPETUAL or DEMO.
    pub license_type: String,
    pub start_date: String,
    pub end_date: Option<String>,
    pub subscription_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct CssmConfig {
    pub bind: SocketAddr,
    pub client_id: String,
    pub client_secret: String,
    /// Polls before this has elapsed since the upload answer `OK_POLL`.
    pub processing_delay: Duration,
    pub token_ttl: Duration,
    pub device_secret: Vec<u8>,
    pub cssm_secret: Vec<u8>,
    pub smart_account: SmartAccount,
    pub virtual_accounts: Vec<VirtualAccount>,
    /// Pools at start; `/sim/licenses` changes them afterwards (see [`CssmState::pools`]).
    pub pools: Vec<LicensePool>,
    /// A policy to send with every ACK issued (`<smartLicensePolicy>`, as a real CSSM can);
    /// none by default. `PUT /sim/ack-policy` changes it afterwards.
    pub ack_policy: Option<SimPolicy>,
}

/// Default pools: per virtual account, the three DNA tiers (3-year term) and the two network
/// licenses (perpetual) for C9300.
pub fn default_pools(vas: &[VirtualAccount]) -> Vec<LicensePool> {
    let mut out = Vec::new();
    for (k, va) in vas.iter().enumerate() {
        let scale = [400i64, 300, 60].get(k).copied().unwrap_or(100);
        for (tier, q, used) in [
            ("Essentials", scale / 2, scale / 5),
            ("Advantage", scale, scale * 3 / 5),
            ("Premier", scale / 4, scale / 10),
        ] {
            out.push(LicensePool {
                license: format!("C9300 DNA {tier}, 3Y"),
                virtual_account: va.name.clone(),
                quantity: q,
                in_use: used,
                license_type: "TERM".into(),
                start_date: "2025-01-01".into(),
                end_date: Some("2028-01-01".into()),
                subscription_id: Some(format!("Sub{}{}", va.id, &tier[..3].to_uppercase())),
            });
        }
        for (nl, q, used) in [
            ("Network Essentials", scale / 2, scale / 4),
            ("Network Advantage", scale, scale / 2),
        ] {
            out.push(LicensePool {
                license: format!("C9300 {nl}"),
                virtual_account: va.name.clone(),
                quantity: q,
                in_use: used,
                license_type: "PERPETUAL".into(),
                start_date: "2024-06-01".into(),
                end_date: None,
                subscription_id: None,
            });
        }
    }
    out
}

/// Pools that match a simulated fleet: per virtual account and license (found with
/// `rules.license_for` for each device's model and starting network license and DNA tier),
/// `in_use` is the number of devices and `quantity` adds `headroom_pct` percent plus 5.
/// DNA licenses are 3-year terms, network licenses perpetual. Devices of a model no rule fits
/// hold no license.
pub fn fleet_pools(fleet: &FleetConfig, rules: &Rules, headroom_pct: u32) -> Vec<LicensePool> {
    // (virtual account, index of the license rule) -> devices; ordered like the VAs and rules.
    let mut counts: BTreeMap<(usize, usize), i64> = BTreeMap::new();
    let n_vas = fleet.virtual_accounts.len();
    for i in 0..fleet.devices {
        let p = profile(fleet.seed, i, n_vas);
        let levels = [
            Some(Level::Network(p.network_license)),
            p.dna_tier.map(Level::Dna),
        ];
        for level in levels.into_iter().flatten() {
            let rule = rules
                .license_for(p.model, level)
                .and_then(|r| rules.license_named(&r.name));
            if let Some((k, _)) = rule {
                *counts.entry((p.va, k)).or_default() += 1;
            }
        }
    }
    counts
        .into_iter()
        .filter_map(|((va, k), n)| {
            let rule = rules.licenses.get(k)?;
            let term = rule.level.is_dna();
            Some(LicensePool {
                license: rule.name.clone(),
                virtual_account: fleet.virtual_accounts.get(va).cloned().unwrap_or_default(),
                quantity: n + n * i64::from(headroom_pct) / 100 + 5,
                in_use: n,
                license_type: if term { "TERM" } else { "PERPETUAL" }.into(),
                start_date: if term { "2025-01-01" } else { "2024-06-01" }.into(),
                end_date: term.then(|| "2028-01-01".into()),
                subscription_id: term.then(|| format!("Sub{}-{k:03}", va + 1)),
            })
        })
        .collect()
}

impl Default for CssmConfig {
    fn default() -> Self {
        let virtual_accounts = vec![
            VirtualAccount {
                name: "Campus".into(),
                id: "2001".into(),
            },
            VirtualAccount {
                name: "Branch".into(),
                id: "2002".into(),
            },
            VirtualAccount {
                name: "Voice".into(),
                id: "2003".into(),
            },
        ];
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            client_id: "tally".into(),
            client_secret: "tally-sim-secret".into(),
            processing_delay: Duration::from_secs(2),
            token_ttl: Duration::from_secs(3600),
            device_secret: b"tally-sim-devices".to_vec(),
            cssm_secret: b"tally-sim-cssm".to_vec(),
            smart_account: SmartAccount {
                name: "acme.example".into(),
                id: "1001".into(),
                domain: "acme.example".into(),
            },
            pools: default_pools(&virtual_accounts),
            virtual_accounts,
            ack_policy: None,
        }
    }
}

#[derive(Default)]
struct Stats {
    reports_received: AtomicU64,
    reports_accepted: AtomicU64,
    duplicates: AtomicU64,
    signature_failures: AtomicU64,
    requests: AtomicU64,
    polls: AtomicU64,
    offline_bundles: AtomicU64,
}

/// Snapshot of the counters (`GET /sim/stats`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    pub reports_received: u64,
    pub reports_accepted: u64,
    pub duplicates: u64,
    pub signature_failures: u64,
    pub requests: u64,
    pub polls: u64,
    pub offline_bundles: u64,
}

type ReportKey = (Udi, u64);

#[derive(Default)]
struct Ledger {
    accepted: HashSet<ReportKey>,
    /// nonce -> (sorted report keys of that request, poll id)
    nonces: HashMap<String, (Vec<ReportKey>, String)>,
}

struct Poll {
    ready_at: Instant,
    acknowledgements: Arc<Vec<serde_json::Value>>,
}

/// Shared state of a running CSSM simulator.
pub struct CssmState {
    cfg: CssmConfig,
    pools: RwLock<Vec<LicensePool>>,
    ack_policy: RwLock<Option<SimPolicy>>,
    ack_signer: Signer,
    tokens: DashMap<String, Instant>,
    device_keys: DashMap<Udi, Arc<[u8]>>,
    ledger: Mutex<Ledger>,
    polls: DashMap<String, Poll>,
    stats: Stats,
}

#[derive(Deserialize)]
struct Req {
    data: Data,
}
#[derive(Deserialize)]
struct Data {
    #[serde(default)]
    nonce: Option<String>,
    reports: Vec<Entry>,
}
#[derive(Deserialize)]
struct Entry {
    sudi: Udi,
    usage: Vec<Box<RawValue>>,
}

/// One change of `PATCH /sim/licenses`: the pool by virtual account and license, new counts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PoolChange {
    pub virtual_account: String,
    pub license: String,
    #[serde(default)]
    pub in_use: Option<i64>,
    #[serde(default)]
    pub quantity: Option<i64>,
}

/// Counts may exceed each other (overcommit is what tests stage) but never go negative.
fn check_counts(p: &LicensePool) -> Result<(), SimError> {
    if p.in_use < 0 || p.quantity < 0 {
        return Err(SimError::BadRequest(format!(
            "pool {:?} of {:?}: quantity and in_use must not be negative",
            p.license, p.virtual_account
        )));
    }
    Ok(())
}

/// Why a report was refused.
#[derive(Debug, Clone, Serialize)]
struct Invalid {
    sudi: Udi,
    report_id: Option<u64>,
    reason: String,
}

impl CssmState {
    pub fn new(cfg: CssmConfig) -> Result<Self, SimError> {
        let ack_signer = Signer::derive(&cfg.cssm_secret, "cssm-ack")
            .map_err(|e| SimError::Internal(e.to_string()))?;
        Ok(Self {
            pools: RwLock::new(cfg.pools.clone()),
            ack_policy: RwLock::new(cfg.ack_policy),
            cfg,
            ack_signer,
            tokens: DashMap::new(),
            device_keys: DashMap::new(),
            ledger: Mutex::new(Ledger::default()),
            polls: DashMap::new(),
            stats: Stats::default(),
        })
    }

    pub fn config(&self) -> &CssmConfig {
        &self.cfg
    }

    /// The policy sent with each ACK issued from now on (`None`: none).
    pub fn ack_policy(&self) -> Option<SimPolicy> {
        *self.ack_policy.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `policy` with each ACK issued from now on (`PUT /sim/ack-policy`).
    pub fn set_ack_policy(&self, policy: Option<SimPolicy>) {
        *self.ack_policy.write().unwrap_or_else(|e| e.into_inner()) = policy;
    }

    /// The license pools as they are now.
    pub fn pools(&self) -> Vec<LicensePool> {
        self.pools.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces every pool (`PUT /sim/licenses`).
    pub fn replace_pools(&self, pools: Vec<LicensePool>) -> Result<(), SimError> {
        let mut seen = HashSet::new();
        for p in &pools {
            check_counts(p)?;
            if !seen.insert((&p.virtual_account, &p.license)) {
                return Err(SimError::BadRequest(format!(
                    "pool {:?} of {:?} is listed twice",
                    p.license, p.virtual_account
                )));
            }
        }
        *self.pools.write().unwrap_or_else(|e| e.into_inner()) = pools;
        Ok(())
    }

    /// Changes `in_use`/`quantity` of named pools, all or none (`PATCH /sim/licenses`); returns
    /// the changed pools.
    pub fn patch_pools(&self, changes: &[PoolChange]) -> Result<Vec<LicensePool>, SimError> {
        let mut pools = self.pools.write().unwrap_or_else(|e| e.into_inner());
        let mut next = pools.clone();
        let mut changed = Vec::with_capacity(changes.len());
        for c in changes {
            let p = next
                .iter_mut()
                .find(|p| p.virtual_account == c.virtual_account && p.license == c.license)
                .ok_or_else(|| {
                    SimError::NotFound(format!(
                        "no pool {:?} in virtual account {:?}",
                        c.license, c.virtual_account
                    ))
                })?;
            p.in_use = c.in_use.unwrap_or(p.in_use);
            p.quantity = c.quantity.unwrap_or(p.quantity);
            check_counts(p)?;
            changed.push(p.clone());
        }
        *pools = next;
        Ok(changed)
    }

    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            reports_received: l(&s.reports_received),
            reports_accepted: l(&s.reports_accepted),
            duplicates: l(&s.duplicates),
            signature_failures: l(&s.signature_failures),
            requests: l(&s.requests),
            polls: l(&s.polls),
            offline_bundles: l(&s.offline_bundles),
        }
    }

    pub fn reset_stats(&self) {
        let s = &self.stats;
        for a in [
            &s.reports_received,
            &s.reports_accepted,
            &s.duplicates,
            &s.signature_failures,
            &s.requests,
            &s.polls,
            &s.offline_bundles,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }

    /// Number of distinct (UDI, report id) accepted so far.
    pub fn accepted_reports(&self) -> usize {
        self.ledger().accepted.len()
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn device_key(&self, udi: &Udi) -> Result<Arc<[u8]>, SimError> {
        if let Some(k) = self.device_keys.get(udi) {
            return Ok(k.clone());
        }
        let key: Arc<[u8]> = Signer::derive(&self.cfg.device_secret, &udi.to_string())
            .map_err(|e| SimError::Internal(e.to_string()))?
            .public_key()
            .into();
        self.device_keys.insert(udi.clone(), key.clone());
        Ok(key)
    }

    /// Checks one report object: well formed, for `expected` (if given), signature valid.
    fn check_report(&self, expected: Option<&Udi>, raw: &str) -> Result<ReportKey, String> {
        #[derive(Deserialize)]
        struct Sig {
            value: String,
        }
        #[derive(Deserialize)]
        struct View {
            payload: String,
            signature: Sig,
        }
        let info = inspect_report(raw).map_err(|e| e.to_string())?;
        if let Some(u) = expected
            && *u != info.udi
        {
            return Err(format!("report is for {}, listed under {u}", info.udi));
        }
        let view: View = serde_json::from_str(raw).map_err(|e| e.to_string())?;
        let key = self.device_key(&info.udi).map_err(|e| e.to_string())?;
        verify_b64(&key, view.payload.as_bytes(), &view.signature.value)
            .map_err(|e| e.to_string())?;
        Ok((info.udi, info.report_id))
    }

    fn va_name(&self, header: Option<&str>) -> String {
        header
            .and_then(|h| self.cfg.virtual_accounts.iter().find(|v| v.id == h))
            .map(|v| v.name.clone())
            .unwrap_or_default()
    }

    /// CSSM addresses accounts by the ids `v2/accounts/search` lists: a name (or anything else)
    /// in `X-CSW-SMART-ACCOUNT-ID` / `X-CSW-VIRTUAL-ACCOUNT-ID` is refused, as is a requesting
    /// system that is not the JSON UDI object Cisco's sample sends.
    pub fn check_headers(
        &self,
        sa: Option<&str>,
        va: Option<&str>,
        requesting: Option<&str>,
    ) -> Result<(), serde_json::Value> {
        let failed = |code: &str, message: String| json!({"status": "FAILED", "message": message, "message_code": code});
        if sa != Some(self.cfg.smart_account.id.as_str()) {
            return Err(failed(
                "INVALID_ACCOUNT_ID",
                format!(
                    "X-CSW-SMART-ACCOUNT-ID {:?} is not the id of a smart account this client may use",
                    sa.unwrap_or("")
                ),
            ));
        }
        if !va.is_some_and(|v| self.cfg.virtual_accounts.iter().any(|x| x.id == v)) {
            return Err(failed(
                "INVALID_ACCOUNT_ID",
                format!(
                    "X-CSW-VIRTUAL-ACCOUNT-ID {:?} is not the id of a virtual account of smart account {}",
                    va.unwrap_or(""),
                    self.cfg.smart_account.id
                ),
            ));
        }
        let udi_ok = requesting
            .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
            .is_some_and(|v| v["udi_pid"].is_string() && v["udi_serial_number"].is_string());
        if !udi_ok {
            return Err(failed(
                "INVALID_REQUESTING_SYSTEM",
                format!(
                    "X-CSW-REQUESTING-SYSTEM {:?} is not a JSON object with udi_pid and udi_serial_number",
                    requesting.unwrap_or("")
                ),
            ));
        }
        Ok(())
    }

    /// One page of `v2/accounts/search` (the published sample's shape), `limit`/`offset` over
    /// the smart accounts.
    pub fn search_accounts(&self, limit: usize, offset: usize) -> serde_json::Value {
        let sa = &self.cfg.smart_account;
        let all = [json!({
            "account_id": sa.id,
            "domain": sa.domain,
            "name": sa.name,
            "account_type": "CUSTOMER",
            "roles": [{"role": "SA Admin"}],
            "virtual_accounts": self.cfg.virtual_accounts.iter().map(|v| json!({
                "virtual_account_id": v.id,
                "name": v.name,
                "default": false,
            })).collect::<Vec<_>>(),
        })];
        let page: Vec<&serde_json::Value> = all.iter().skip(offset).take(limit).collect();
        json!({"status": "COMPLETE", "message": "", "message_code": "", "accounts": page})
    }

    fn ack_document(&self, sudi: Udi, report_ids: Vec<u64>, va: &str) -> String {
        build_ack_document_with_policy(
            &AckBody {
                version: "1.0".into(),
                sudi,
                report_ids,
                ack_time: now_secs(),
                smart_account: self.cfg.smart_account.name.clone(),
                virtual_account: va.to_owned(),
                status: "ACK".into(),
            },
            self.ack_policy(),
            &self.ack_signer,
            ACK_KEY_ID,
        )
    }

    fn issue_token(&self) -> String {
        let token = format!("sim-{}", uuid::Uuid::new_v4().simple());
        let now = Instant::now();
        self.tokens.retain(|_, exp| *exp > now);
        self.tokens.insert(token.clone(), now + self.cfg.token_ttl);
        token
    }

    fn token_valid(&self, req: &HttpRequest) -> bool {
        bearer_token(req)
            .and_then(|t| self.tokens.get(&t).map(|e| *e > Instant::now()))
            .unwrap_or(false)
    }

    /// Handles a `reportusage` body; returns whether it was well formed, and the JSON answer.
    fn report_usage(&self, body: &[u8], va_header: Option<&str>) -> (bool, serde_json::Value) {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let req: Req = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return (
                    false,
                    json!({"status": "FAILED", "message": format!("malformed request: {e}")}),
                );
            }
        };
        (true, self.check_and_record(req, va_header))
    }

    fn check_and_record(&self, req: Req, va_header: Option<&str>) -> serde_json::Value {
        // Parse every report first (outside the ledger lock).
        let mut keys: Vec<Vec<ReportKey>> = Vec::with_capacity(req.data.reports.len());
        let mut invalid = Vec::new();
        let mut unreadable = Vec::new();
        for e in &req.data.reports {
            let mut ks = Vec::with_capacity(e.usage.len());
            for u in &e.usage {
                match self.check_report(Some(&e.sudi), u.get()) {
                    Ok(k) => ks.push(k),
                    Err(reason) => {
                        let id = inspect_report(u.get()).ok().map(|i| i.report_id);
                        let item = Invalid {
                            sudi: e.sudi.clone(),
                            report_id: id,
                            reason,
                        };
                        if id.is_some() {
                            invalid.push(item);
                        } else {
                            unreadable.push(item);
                        }
                    }
                }
            }
            keys.push(ks);
        }
        let mut all: Vec<ReportKey> = keys.iter().flatten().cloned().collect();
        all.extend(
            invalid
                .iter()
                .filter_map(|i| Some((i.sudi.clone(), i.report_id?))),
        );
        all.sort();
        let total: usize = req.data.reports.iter().map(|e| e.usage.len()).sum();

        let mut ledger = self.ledger();
        if let Some(n) = &req.data.nonce
            && let Some((prev, poll_id)) = ledger.nonces.get(n)
            && *prev == all
        {
            return json!({"status": "SUCCESS", "message": "", "poll_id": poll_id, "replay": true});
        }
        self.stats
            .reports_received
            .fetch_add(total as u64, Ordering::Relaxed);
        let mut seen = HashSet::new();
        let dups: Vec<serde_json::Value> = all
            .iter()
            .filter(|k| ledger.accepted.contains(*k) || !seen.insert((*k).clone()))
            .map(|(u, id)| json!({"sudi": u, "report_id": id}))
            .collect();
        if !dups.is_empty() {
            self.stats
                .duplicates
                .fetch_add(dups.len() as u64, Ordering::Relaxed);
            return json!({"status": "FAILED", "message": "duplicate report", "data": {"duplicates": dups}});
        }
        if !invalid.is_empty() || !unreadable.is_empty() {
            let n = invalid.len() + unreadable.len();
            self.stats
                .signature_failures
                .fetch_add(n as u64, Ordering::Relaxed);
            let message = if invalid.is_empty() {
                "invalid report"
            } else {
                "signature verification failed"
            };
            invalid.extend(unreadable);
            return json!({"status": "FAILED", "message": message, "data": {"invalid": invalid}});
        }
        for k in &all {
            ledger.accepted.insert(k.clone());
        }
        let poll_id = uuid::Uuid::new_v4().to_string();
        if let Some(n) = &req.data.nonce {
            ledger.nonces.insert(n.clone(), (all, poll_id.clone()));
        }
        drop(ledger);
        self.stats
            .reports_accepted
            .fetch_add(total as u64, Ordering::Relaxed);
        let va = self.va_name(va_header);
        let acks: Vec<serde_json::Value> = req
            .data
            .reports
            .iter()
            .zip(keys)
            .map(|(e, ks)| {
                let ids: Vec<u64> = ks.into_iter().map(|(_, id)| id).collect();
                let doc = self.ack_document(e.sudi.clone(), ids.clone(), &va);
                json!({"sudi": e.sudi, "report_ids": ids, "smart_license": B64.encode(doc)})
            })
            .collect();
        self.polls.insert(
            poll_id.clone(),
            Poll {
                ready_at: Instant::now() + self.cfg.processing_delay,
                acknowledgements: Arc::new(acks),
            },
        );
        // `poll_id` at the top level, where Cisco's sample reads it.
        json!({"status": "SUCCESS", "message": "", "poll_id": poll_id})
    }

    /// Processes an offline usage bundle; returns the ACK bundle bytes.
    pub fn offline_usage(&self, bytes: &[u8]) -> Result<Vec<u8>, SimError> {
        let bundle =
            UsageBundle::from_tar_gz(bytes).map_err(|e| SimError::BadRequest(e.to_string()))?;
        self.stats.offline_bundles.fetch_add(1, Ordering::Relaxed);
        // How CSSM reads the manifest's ids is not published: the simulator takes the id or
        // the name (docs/interop.md) and refuses accounts it does not hold.
        let sa = &self.cfg.smart_account;
        if ![&sa.id, &sa.name, &sa.domain]
            .iter()
            .any(|k| k.eq_ignore_ascii_case(&bundle.sa_id))
        {
            return Err(SimError::BadRequest(format!(
                "Smart-Account-ID {:?} is not a smart account of this CSSM",
                bundle.sa_id
            )));
        }
        for va in &bundle.vas {
            if !self
                .cfg
                .virtual_accounts
                .iter()
                .any(|v| v.id == va.va_id || v.name == va.va_id)
            {
                return Err(SimError::BadRequest(format!(
                    "Specification-VA-ID {:?} ({}) is not a virtual account of smart account {}",
                    va.va_id, va.va_name, sa.id
                )));
            }
        }
        let ts = now_secs();
        let mut vas = Vec::with_capacity(bundle.vas.len());
        for va in &bundle.vas {
            let mut files = Vec::with_capacity(va.devices.len());
            for dev in &va.devices {
                let reports = parse_envelope(&dev.content).map_err(|e| {
                    SimError::BadRequest(format!("device file {}: {e}", dev.device_id))
                })?;
                self.stats
                    .reports_received
                    .fetch_add(reports.len() as u64, Ordering::Relaxed);
                let mut udi = None::<Udi>;
                let mut ids = Vec::new();
                for r in &reports {
                    match self.check_report(None, r) {
                        Ok((u, id)) => {
                            let mut ledger = self.ledger();
                            if ledger.accepted.insert((u.clone(), id)) {
                                ids.push(id);
                                self.stats.reports_accepted.fetch_add(1, Ordering::Relaxed);
                            } else {
                                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                            }
                            udi.get_or_insert(u);
                        }
                        Err(reason) => {
                            tracing::debug!(device = %dev.device_id, %reason, "offline report refused");
                            self.stats
                                .signature_failures
                                .fetch_add(1, Ordering::Relaxed);
                            if udi.is_none() {
                                udi = inspect_report(r).ok().map(|i| i.udi);
                            }
                        }
                    }
                }
                let udi = udi.ok_or_else(|| {
                    SimError::BadRequest(format!(
                        "device file {} holds no readable report",
                        dev.device_id
                    ))
                })?;
                files.push(DeviceFile {
                    device_id: dev.device_id.clone(),
                    content: self.ack_document(udi, ids, &va.va_name),
                });
            }
            vas.push((va.va_name.clone(), files));
        }
        AckBundle { timestamp: ts, vas }
            .to_tar_gz()
            .map_err(|e| SimError::Internal(e.to_string()))
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

type St = web::Data<CssmState>;

fn unauthorized() -> HttpResponse {
    HttpResponse::Unauthorized()
        .insert_header(("WWW-Authenticate", "Bearer"))
        .json(json!({"error": "invalid_token"}))
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

async fn token(req: HttpRequest, st: St, form: Option<web::Form<TokenForm>>) -> HttpResponse {
    let form = form.map(|f| f.into_inner());
    let (id, secret) = match (
        form.as_ref().and_then(|f| f.client_id.clone()),
        form.as_ref().and_then(|f| f.client_secret.clone()),
    ) {
        (Some(i), Some(s)) => (i, s),
        _ => match basic_credentials(&req) {
            Some(c) => c,
            None => return HttpResponse::Unauthorized().json(json!({"error": "invalid_client"})),
        },
    };
    if let Some(g) = form.as_ref().and_then(|f| f.grant_type.as_deref())
        && g != "client_credentials"
    {
        return HttpResponse::BadRequest().json(json!({"error": "unsupported_grant_type"}));
    }
    if id != st.cfg.client_id || secret != st.cfg.client_secret {
        return HttpResponse::Unauthorized().json(json!({"error": "invalid_client"}));
    }
    let t = st.issue_token();
    HttpResponse::Ok().json(json!({
        "access_token": t,
        "token_type": "Bearer",
        "expires_in": st.cfg.token_ttl.as_secs(),
    }))
}

async fn report_usage(req: HttpRequest, st: St, body: web::Bytes) -> HttpResponse {
    if !st.token_valid(&req) {
        return unauthorized();
    }
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let va = header("X-CSW-VIRTUAL-ACCOUNT-ID");
    if let Err(v) = st.check_headers(
        header("X-CSW-SMART-ACCOUNT-ID").as_deref(),
        va.as_deref(),
        header("X-CSW-REQUESTING-SYSTEM").as_deref(),
    ) {
        st.stats.requests.fetch_add(1, Ordering::Relaxed);
        return HttpResponse::BadRequest().json(v);
    }
    let st2 = st.clone();
    match web::block(move || st2.report_usage(&body, va.as_deref())).await {
        Ok((true, v)) => HttpResponse::Ok().json(v),
        Ok((false, v)) => HttpResponse::BadRequest().json(v),
        Err(e) => HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
    }
}

#[derive(Deserialize)]
struct PollReq {
    data: PollData,
}
#[derive(Deserialize)]
struct PollData {
    poll_id: String,
}

async fn poll(req: HttpRequest, st: St, body: web::Bytes) -> HttpResponse {
    if !st.token_valid(&req) {
        return unauthorized();
    }
    st.stats.polls.fetch_add(1, Ordering::Relaxed);
    let p: PollReq = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return HttpResponse::BadRequest()
                .json(json!({"status": "FAILED", "message": format!("malformed request: {e}")}));
        }
    };
    let id = p.data.poll_id;
    let Some(entry) = st.polls.get(&id) else {
        return HttpResponse::NotFound()
            .json(json!({"status": "FAILED", "message": format!("unknown poll_id {id}")}));
    };
    if Instant::now() < entry.ready_at {
        return HttpResponse::Ok().json(json!({"status": "OK_POLL", "message": "", "poll_id": id}));
    }
    let acks = entry.acknowledgements.clone();
    drop(entry);
    HttpResponse::Ok().json(json!({
        "status": "COMPLETE",
        "message": "",
        "poll_id": id,
        "data": {"acknowledgements": *acks},
    }))
}

#[derive(Deserialize)]
struct SearchQuery {
    limit: Option<usize>,
    offset: Option<usize>,
}

async fn search_accounts(req: HttpRequest, st: St, q: web::Query<SearchQuery>) -> HttpResponse {
    if !st.token_valid(&req) {
        return unauthorized();
    }
    let limit = q.limit.unwrap_or(1000).clamp(1, 1000);
    HttpResponse::Ok().json(st.search_accounts(limit, q.offset.unwrap_or(0)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LicensesReq {
    #[serde(default)]
    virtual_accounts: Vec<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

async fn licenses(
    req: HttpRequest,
    st: St,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    if !st.token_valid(&req) {
        return unauthorized();
    }
    let domain = path.into_inner();
    if domain != st.cfg.smart_account.domain {
        return HttpResponse::NotFound().json(
            json!({"status": "FAILED", "message": format!("unknown smart account {domain}")}),
        );
    }
    let q: LicensesReq = if body.iter().all(u8::is_ascii_whitespace) {
        LicensesReq {
            virtual_accounts: vec![],
            limit: None,
            offset: None,
        }
    } else {
        match serde_json::from_slice(&body) {
            Ok(q) => q,
            Err(e) => {
                return HttpResponse::BadRequest()
                    .json(json!({"status": "FAILED", "message": e.to_string()}));
            }
        }
    };
    let pools = st.pools.read().unwrap_or_else(|e| e.into_inner());
    let matching: Vec<&LicensePool> = pools
        .iter()
        .filter(|p| {
            q.virtual_accounts.is_empty() || q.virtual_accounts.contains(&p.virtual_account)
        })
        .collect();
    let offset = q.offset.unwrap_or(0);
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let page: Vec<serde_json::Value> = matching
        .iter()
        .skip(offset)
        .take(limit)
        .map(|p| {
            json!({
                "license": p.license,
                "virtualAccount": p.virtual_account,
                "quantity": p.quantity,
                "inUse": p.in_use,
                "available": p.quantity - p.in_use,
                "status": if p.in_use <= p.quantity { "In Compliance" } else { "Out of Compliance" },
                "licenseDetails": [{
                    "licenseType": p.license_type,
                    "quantity": p.quantity,
                    "startDate": p.start_date,
                    "endDate": p.end_date,
                    "subscriptionId": p.subscription_id,
                }],
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({"totalRecords": matching.len(), "licenses": page}))
}

async fn offline_usage(st: St, body: web::Bytes) -> Result<HttpResponse, SimError> {
    let st2 = st.clone();
    let out = web::block(move || st2.offline_usage(&body))
        .await
        .map_err(|e| SimError::Internal(e.to_string()))??;
    Ok(HttpResponse::Ok()
        .content_type("application/gzip")
        .insert_header((
            "Content-Disposition",
            format!("attachment; filename=\"ACK_UD_SA_{}.tar.gz\"", now_secs()),
        ))
        .body(out))
}

async fn get_pools(st: St) -> HttpResponse {
    HttpResponse::Ok().json(st.pools())
}

async fn put_pools(st: St, body: web::Json<Vec<LicensePool>>) -> Result<HttpResponse, SimError> {
    let n = body.len();
    st.replace_pools(body.into_inner())?;
    Ok(HttpResponse::Ok().json(json!({"status": "SUCCESS", "pools": n})))
}

async fn patch_pools(st: St, body: web::Json<Vec<PoolChange>>) -> Result<HttpResponse, SimError> {
    let changed = st.patch_pools(&body)?;
    Ok(HttpResponse::Ok().json(json!({"status": "SUCCESS", "changed": changed})))
}

/// `PUT /sim/ack-policy`: `{"policy": "custom_30_60_60" | "enforced" | "cisco_default" | null}`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AckPolicy {
    pub policy: Option<SimPolicy>,
}

async fn get_ack_policy(st: St) -> HttpResponse {
    HttpResponse::Ok().json(AckPolicy {
        policy: st.ack_policy(),
    })
}

async fn put_ack_policy(st: St, body: web::Json<AckPolicy>) -> HttpResponse {
    st.set_ack_policy(body.policy);
    HttpResponse::Ok().json(AckPolicy {
        policy: st.ack_policy(),
    })
}

async fn stats(st: St) -> HttpResponse {
    HttpResponse::Ok().json(st.stats())
}

async fn reset_stats(st: St) -> HttpResponse {
    st.reset_stats();
    HttpResponse::Ok().json(json!({"status": "SUCCESS"}))
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/oauth2/v1/token", web::post().to(token))
        .service(
            web::resource(format!("{API}/v2/devices/reportusage"))
                .app_data(web::PayloadConfig::new(MAX_REPORTUSAGE_BYTES))
                .route(web::post().to(report_usage)),
        )
        .route(&format!("{API}/v2/accounts/poll"), web::post().to(poll))
        .route(
            &format!("{API}/v2/accounts/search"),
            web::get().to(search_accounts),
        )
        .route(
            &format!("{API}/v1/accounts/{{domain}}/licenses"),
            web::post().to(licenses),
        )
        .service(
            web::resource("/sim/offline/usage")
                .app_data(web::PayloadConfig::new(MAX_BUNDLE_BYTES))
                .route(web::post().to(offline_usage)),
        )
        .service(
            web::resource("/sim/licenses")
                .route(web::get().to(get_pools))
                .route(web::put().to(put_pools))
                .route(web::patch().to(patch_pools)),
        )
        .service(
            web::resource("/sim/ack-policy")
                .route(web::get().to(get_ack_policy))
                .route(web::put().to(put_ack_policy)),
        )
        .route("/sim/stats", web::get().to(stats))
        .route("/sim/reset-stats", web::post().to(reset_stats));
}

fn build(cfg: CssmConfig) -> std::io::Result<(SocketAddr, Server, Arc<CssmState>)> {
    let bind = cfg.bind;
    let state = Arc::new(CssmState::new(cfg).map_err(io_err)?);
    let data = web::Data::from(state.clone());
    let server = HttpServer::new(move || App::new().app_data(data.clone()).configure(routes))
        .workers(2)
        .keep_alive(Duration::from_secs(75))
        .bind(bind)?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| io_err("server bound no address"))?;
    tracing::info!(%addr, "CSSM simulator listening");
    Ok((addr, server.run(), state))
}

/// Binds, starts the CSSM simulator in the background and returns its address, a handle to stop
/// it, and its state.
pub async fn start_cssm(
    cfg: CssmConfig,
) -> std::io::Result<(SocketAddr, ServerHandle, Arc<CssmState>)> {
    let (addr, server, state) = build(cfg)?;
    let handle = server.handle();
    tokio::spawn(server);
    Ok((addr, handle, state))
}

/// Runs the CSSM simulator until it stops.
pub async fn run_cssm(cfg: CssmConfig) -> std::io::Result<()> {
    let (_, server, _) = build(cfg)?;
    server.await
}
