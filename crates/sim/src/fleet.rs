//! Device fleet simulator: N simulated IOS-XE devices in one process, each with its own base URL
//! `http://<bind>/d/<index>` serving Cisco's device-side API under `<base>/smartlic-service`
//! (slp-reference section 2), the RESTCONF boot-level resource under `<base>/restconf/data/...`
//! (see [`crate::restconf`]), plus `<base>/sim/*` and fleet-level `/sim/*` endpoints for tests.
//!
//! Static device attributes (model, serial, tiers, site, ...) are computed from `(seed, index)` on
//! demand; only the mutable licensing state is stored, so 100,000 devices fit in a few MiB.
//!
//! A device runs one boot level and may be configured for another: a PUT of the boot level takes
//! effect (in RUM reports and status) only after `POST .../sim/reload`, as on a real device.

use crate::ack::parse_ack_document;
use crate::common::{SimError, basic_credentials, io_err, mix, now_secs};
use crate::restconf::{Level, RestconfError, YANG_JSON, level_json, parse_level};
use crate::yang_state::{self, SimPolicy, StateView};
use actix_web::{
    App, HttpRequest, HttpResponse, HttpServer,
    dev::{Server, ServerHandle},
    web,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tally_domain::{
    DnaTier, NetworkLicense, Udi,
    policy::LicenseKind,
    rum::{
        Asset, AssetIdentification, InnerSignature, Instance, Measurement, MeasurementMeta,
        MeasurementValue, Payload, PayloadMeta, ReportSignature, report_object,
    },
    sign::Signer,
};

/// Largest `POST /import` body.
pub const MAX_IMPORT_BYTES: usize = 1024 * 1024;
/// Acknowledged reports kept per device (for `/list` and `/days`); older ones are forgotten.
const KEEP_ACKED: usize = 8;
const DAY: i64 = 86_400;

#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub devices: usize,
    pub bind: SocketAddr,
    /// Seed of the deterministic fleet (models, serials, tiers, report ids).
    pub seed: u64,
    /// Devices derive their signing keys from this secret and their UDI.
    pub device_secret: Vec<u8>,
    /// CSSM's ACK key is derived from this secret (label `cssm-ack`).
    pub cssm_secret: Vec<u8>,
    pub username: String,
    pub password: String,
    pub smart_account: String,
    pub virtual_accounts: Vec<String>,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            devices: 1000,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            seed: 1,
            device_secret: b"tally-sim-devices".to_vec(),
            cssm_secret: b"tally-sim-cssm".to_vec(),
            username: "admin".into(),
            password: "cisco-sim".into(),
            smart_account: "acme.example".into(),
            virtual_accounts: vec!["Campus".into(), "Branch".into(), "Voice".into()],
        }
    }
}

/// Fault injected into a device's `GET /all-reports` (and `/days`) and its boot-level resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    #[default]
    None,
    /// A report object that is truncated, broken JSON text.
    MalformedEnvelope,
    /// Report objects without their `signature`.
    MissingSignature,
    /// HTTP 500 (report listings and the boot-level resource).
    #[serde(rename = "http_500")]
    Http500,
    /// Sleeps 30 s before answering report listings.
    Slow,
    /// Boot-level PUT/PATCH answers 409 `lock-denied`, as a device whose configuration is locked.
    BootLevelRefused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    C9300,
    C9200,
    C9800,
    Isr4k,
    C8200,
}

impl Family {
    fn code(self) -> &'static str {
        match self {
            Self::C9300 => "C9300",
            Self::C9200 => "C9200",
            Self::C9800 => "C9800",
            Self::Isr4k => "ISR_4K",
            Self::C8200 => "C8200",
        }
    }
    fn asset(self) -> &'static str {
        match self {
            Self::C9300 => "regid.2017-03.com.cisco.C9300",
            Self::C9200 => "regid.2018-11.com.cisco.C9200",
            Self::C9800 => "regid.2018-06.com.cisco.C9800",
            Self::Isr4k => "regid.2014-12.com.cisco.ISR4400",
            Self::C8200 => "regid.2020-11.com.cisco.C8200",
        }
    }
}

/// Static attributes of a device, computed from `(seed, index)`; the tiers are the boot level the
/// device starts with.
#[derive(Debug, Clone)]
pub(crate) struct Profile {
    family: Family,
    pub(crate) model: &'static str,
    pid: &'static str,
    software_version: &'static str,
    pub(crate) network_license: NetworkLicense,
    pub(crate) dna_tier: Option<DnaTier>,
    is_cube: bool,
    voice_role: &'static str,
    site: String,
    /// Index into the fleet's virtual accounts.
    pub(crate) va: usize,
    serial: String,
}

const VERSIONS: [&str; 4] = ["17.3.4", "17.6.5", "17.9.4a", "17.12.3"];
const BASE36: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const SERIAL_SPACE: u64 = 36u64.pow(8);

fn h(seed: u64, index: usize, salt: u64) -> u64 {
    mix(seed ^ mix((index as u64) ^ mix(salt)))
}

/// `FCW` + 8 base-36 characters; a bijection of the index, so serials are unique.
fn serial(seed: u64, index: usize) -> String {
    // 1_234_567_891 is coprime to 36, so i -> (i*A + B) mod 36^8 is a bijection.
    let mut v =
        ((index as u64 % SERIAL_SPACE) * 1_234_567_891 + mix(seed) % SERIAL_SPACE) % SERIAL_SPACE;
    let mut chars = [b'0'; 8];
    for c in chars.iter_mut().rev() {
        *c = BASE36[(v % 36) as usize];
        v /= 36;
    }
    format!("FCW{}", String::from_utf8_lossy(&chars))
}

pub(crate) fn profile(seed: u64, index: usize, n_vas: usize) -> Profile {
    let r = h(seed, index, 1);
    let pick = (r % 100) as u32;
    let sub = (r >> 8) % 1000;
    let (family, model, pid) = match pick {
        0..45 => match sub % 3 {
            0 => (Family::C9300, "C9300-24P", "C9300-24P"),
            1 => (Family::C9300, "C9300-48P", "C9300-48P"),
            _ => (Family::C9300, "C9300-48U", "C9300-48U"),
        },
        45..70 => match sub % 2 {
            0 => (Family::C9200, "C9200-24P", "C9200-24P"),
            _ => (Family::C9200, "C9200-48P", "C9200-48P"),
        },
        70..80 => match sub % 2 {
            0 => (Family::C9800, "C9800-40", "C9800-40-K9"),
            _ => (Family::C9800, "C9800-L-C", "C9800-L-C-K9"),
        },
        _ => match sub % 3 {
            0 => (Family::Isr4k, "ISR4331", "ISR4331/K9"),
            1 => (Family::Isr4k, "ISR4451", "ISR4451-X/K9"),
            _ => (Family::C8200, "C8200-1N-4T", "C8200-1N-4T"),
        },
    };
    let router = matches!(family, Family::Isr4k | Family::C8200);
    let r2 = h(seed, index, 2);
    let is_cube = router && r2 & 1 == 0;
    // A quarter of the other routers are SRST or CME gateways: they too stop on a missed ACK.
    let voice_role = match (r2 >> 40) % 8 {
        _ if is_cube => "cube",
        0 if router => "srst",
        1 if router => "cme",
        _ => "",
    };
    let software_version = VERSIONS[((r2 >> 4) % 4) as usize];
    let dna_tier = match (r2 >> 16) % 10 {
        0..=2 if router => None,
        0..=3 => Some(DnaTier::DnaEssentials),
        4..=7 => Some(DnaTier::DnaAdvantage),
        _ => Some(DnaTier::DnaPremier),
    };
    // The license YANG allows only dna-essentials on network-essentials: a device never boots
    // into another pairing.
    let network_license = if (r2 >> 8) % 5 < 3
        || matches!(dna_tier, Some(DnaTier::DnaAdvantage | DnaTier::DnaPremier))
    {
        NetworkLicense::NetworkAdvantage
    } else {
        NetworkLicense::NetworkEssentials
    };
    let s = (r2 >> 24) % 4;
    let site = if s == 0 {
        "hq".to_owned()
    } else {
        format!("branch-{:02}", (r2 >> 32) % 20 + 1)
    };
    let va = if n_vas == 0 {
        0
    } else if is_cube && n_vas >= 3 {
        2
    } else if site == "hq" {
        0
    } else {
        1 % n_vas
    };
    Profile {
        family,
        model,
        pid,
        software_version,
        network_license,
        dna_tier,
        is_cube,
        voice_role,
        site,
        va,
        serial: serial(seed, index),
    }
}

impl Profile {
    fn level(&self) -> Level {
        (self.network_license, self.dna_tier)
    }
    fn with_level(mut self, (network, dna): Level) -> Self {
        self.network_license = network;
        self.dna_tier = dna;
        self
    }
    fn udi(&self) -> Result<Udi, SimError> {
        Udi::new(self.pid, self.serial.clone()).map_err(|e| SimError::Internal(e.to_string()))
    }
    fn hostname(&self, index: usize) -> String {
        let role = match self.family {
            Family::C9300 | Family::C9200 => "sw",
            Family::C9800 => "wlc",
            _ if self.is_cube => "cube",
            _ if !self.voice_role.is_empty() => self.voice_role,
            _ => "rtr",
        };
        format!("{role}-{}-{index}", self.site)
    }
    /// Entitlement tags in use: the network license, then the DNA add-on if any.
    fn entitlement_tags(&self) -> Vec<String> {
        let mut tags = vec![tag(
            self.family,
            match self.network_license {
                NetworkLicense::NetworkEssentials => "Network_Essentials",
                NetworkLicense::NetworkAdvantage => "Network_Advantage",
            },
            "2017-03",
        )];
        if let Some(t) = self.dna_tier {
            let kind = match t {
                DnaTier::DnaEssentials => "DNA_Essentials",
                DnaTier::DnaAdvantage => "DNA_Advantage",
                DnaTier::DnaPremier => "DNA_Premier",
            };
            tags.push(tag(self.family, kind, "2017-05"));
        }
        tags
    }
}

/// A regid entitlement tag like `regid.2017-05.com.cisco.C9300_DNA_Advantage,1.0_<uuid>`.
fn tag(family: Family, kind: &str, date: &str) -> String {
    let name = format!("{}_{kind}", family.code());
    let a = mix(name.bytes().fold(0u64, |acc, b| mix(acc ^ u64::from(b))));
    let b = mix(a);
    format!(
        "regid.{date}.com.cisco.{name},1.0_{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

#[derive(Debug)]
struct StoredReport {
    id: u64,
    end_time: i64,
    acked: bool,
    text: Box<str>,
}

#[derive(Debug)]
struct DeviceState {
    next_report_id: u64,
    window_start: i64,
    reports: Vec<StoredReport>,
    /// When the device last took an ACK; moves only when an import was verified and applied.
    last_ack_time: Option<DateTime<Utc>>,
    last_ack_valid: bool,
    policy: SimPolicy,
    policy_installed: DateTime<Utc>,
    /// RESTCONF is a feature of its own: when off, every `/restconf` path answers 404.
    restconf: bool,
    /// Off: the device answers 2xx to a verified import but does not apply it (nothing moves),
    /// so read-back can tell a device that took an ACK from one that only said so.
    apply_acks: bool,
    /// Off: the device's model predates `rum-ack` (see [`StateView::rum_ack`]).
    rum_ack: bool,
    imports: u32,
    reports_generated: u32,
    fault: Fault,
    /// Boot level the device runs; `None`: its profile's level.
    running_level: Option<Level>,
    /// Boot level of the next reload; kept only while it differs from the running one.
    configured_level: Option<Level>,
}

impl DeviceState {
    fn running(&self, p: &Profile) -> Level {
        self.running_level.unwrap_or(p.level())
    }
    fn configured(&self, p: &Profile) -> Level {
        self.configured_level.unwrap_or(self.running(p))
    }
}

/// Shared state of a running fleet.
pub struct FleetState {
    cfg: FleetConfig,
    devices: Vec<Mutex<DeviceState>>,
    base: OnceLock<String>,
    cssm_public_key: Vec<u8>,
    /// First use of every device's licenses (the fleet's start, a day back).
    first_use: DateTime<Utc>,
    imports: AtomicU64,
    imports_not_applied: AtomicU64,
    state_requests: AtomicU64,
    import_failures: AtomicU64,
    boot_level_requests: AtomicU64,
}

/// One row of `GET /sim/devices`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceInfo {
    pub index: usize,
    pub hostname: String,
    pub udi_pid: String,
    pub serial: String,
    pub model: String,
    pub software_version: String,
    pub base_url: String,
    pub site: String,
    pub smart_account: String,
    pub virtual_account: String,
    pub network_license: String,
    pub dna_tier: Option<String>,
    pub is_cube: bool,
    /// cube, srst, cme, or empty.
    pub voice_role: String,
    pub username: String,
    pub password: String,
    /// Boot level after the next reload (`network_license`/`dna_tier` are the running level).
    pub configured_network_license: String,
    pub configured_dna_tier: Option<String>,
    /// The configured level differs from the running one.
    pub pending_reload: bool,
}

/// Fields of [`DeviceInfo`] that describe the simulation, not a device to manage: drop them
/// before importing the rows into an inventory.
pub const SIM_ONLY_FIELDS: [&str; 4] = [
    "index",
    "configured_network_license",
    "configured_dna_tier",
    "pending_reload",
];

// New columns go at the end: importers read by header name, older ones by position.
const CSV_HEADER: &str = "index,hostname,udi_pid,serial,model,software_version,base_url,site,smart_account,virtual_account,network_license,dna_tier,is_cube,username,password,configured_network_license,configured_dna_tier,pending_reload,voice_role";

fn lock(m: &Mutex<DeviceState>) -> std::sync::MutexGuard<'_, DeviceState> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FleetState {
    pub fn new(cfg: FleetConfig) -> Result<Self, SimError> {
        let cssm_public_key = Signer::derive(&cfg.cssm_secret, "cssm-ack")
            .map_err(|e| SimError::Internal(e.to_string()))?
            .public_key();
        let first_use = Utc::now() - chrono::TimeDelta::days(1);
        let start = first_use.timestamp();
        // Report ids keep growing across simulator restarts, as a real device's persisted
        // counter does, so a restarted fleet never re-issues an id Tally already stored.
        let id_base = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0) * 1000;
        let devices = (0..cfg.devices)
            .map(|i| {
                Mutex::new(DeviceState {
                    next_report_id: id_base + h(cfg.seed, i, 3) % 1000 + 1,
                    window_start: start,
                    reports: Vec::new(),
                    last_ack_time: None,
                    last_ack_valid: false,
                    policy: SimPolicy::CiscoDefault,
                    policy_installed: first_use,
                    restconf: true,
                    apply_acks: true,
                    rum_ack: true,
                    imports: 0,
                    reports_generated: 0,
                    fault: Fault::None,
                    running_level: None,
                    configured_level: None,
                })
            })
            .collect();
        Ok(Self {
            cfg,
            devices,
            base: OnceLock::new(),
            cssm_public_key,
            first_use,
            imports: AtomicU64::new(0),
            imports_not_applied: AtomicU64::new(0),
            state_requests: AtomicU64::new(0),
            import_failures: AtomicU64::new(0),
            boot_level_requests: AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> &FleetConfig {
        &self.cfg
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Base URL of the server, e.g. `http://127.0.0.1:8443` (set once bound).
    pub fn base_url(&self) -> &str {
        self.base.get().map(String::as_str).unwrap_or("")
    }

    fn set_addr(&self, addr: SocketAddr) {
        let ip = if addr.ip().is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            addr.ip()
        };
        let _ = self
            .base
            .set(format!("http://{}", SocketAddr::new(ip, addr.port())));
    }

    /// UDI of device `index`.
    pub fn udi(&self, index: usize) -> Result<Udi, SimError> {
        self.profile(index)?.udi()
    }

    /// Base URL of device `index` (`<server>/d/<index>`).
    pub fn device_url(&self, index: usize) -> String {
        format!("{}/d/{index}", self.base_url())
    }

    /// Sets the fault injected into device `index`'s report listing.
    pub fn set_fault(&self, index: usize, fault: Fault) -> Result<(), SimError> {
        lock(self.device(index)?).fault = fault;
        Ok(())
    }

    fn device(&self, index: usize) -> Result<&Mutex<DeviceState>, SimError> {
        self.devices
            .get(index)
            .ok_or_else(|| SimError::NotFound(format!("no device {index}")))
    }

    fn profile(&self, index: usize) -> Result<Profile, SimError> {
        if index >= self.devices.len() {
            return Err(SimError::NotFound(format!("no device {index}")));
        }
        Ok(profile(
            self.cfg.seed,
            index,
            self.cfg.virtual_accounts.len(),
        ))
    }

    /// Row of `GET /sim/devices` for device `index`.
    pub fn info(&self, index: usize) -> Result<DeviceInfo, SimError> {
        let p = self.profile(index)?;
        let (running, configured) = {
            let d = lock(self.device(index)?);
            (d.running(&p), d.configured(&p))
        };
        let p = p.with_level(running);
        Ok(DeviceInfo {
            index,
            hostname: p.hostname(index),
            udi_pid: p.pid.to_owned(),
            serial: p.serial.clone(),
            model: p.model.to_owned(),
            software_version: p.software_version.to_owned(),
            base_url: self.device_url(index),
            site: p.site.clone(),
            smart_account: self.cfg.smart_account.clone(),
            virtual_account: self
                .cfg
                .virtual_accounts
                .get(p.va)
                .cloned()
                .unwrap_or_default(),
            network_license: p.network_license.as_str().to_owned(),
            dna_tier: p.dna_tier.map(|t| t.as_str().to_owned()),
            is_cube: p.is_cube,
            voice_role: p.voice_role.to_owned(),
            username: self.cfg.username.clone(),
            password: self.cfg.password.clone(),
            configured_network_license: configured.0.as_str().to_owned(),
            configured_dna_tier: configured.1.map(|t| t.as_str().to_owned()),
            pending_reload: running != configured,
        })
    }

    /// Configured boot level of device `index` (what its next reload runs; [`Self::info`] shows
    /// the running one).
    pub fn configured_level(
        &self,
        index: usize,
    ) -> Result<(NetworkLicense, Option<DnaTier>), SimError> {
        let p = self.profile(index)?;
        Ok(lock(self.device(index)?).configured(&p))
    }

    fn set_configured_level(&self, index: usize, level: Level) -> Result<(), SimError> {
        let p = self.profile(index)?;
        let mut d = lock(self.device(index)?);
        d.configured_level = (level != d.running(&p)).then_some(level);
        Ok(())
    }

    /// Reloads device `index`: its configured boot level becomes the running one. Returns whether
    /// the running level changed.
    pub fn reload(&self, index: usize) -> Result<bool, SimError> {
        let mut d = lock(self.device(index)?);
        Ok(match d.configured_level.take() {
            Some(level) => {
                d.running_level = Some(level);
                true
            }
            None => false,
        })
    }

    /// Closes the open usage window of device `index`; returns how many reports were closed.
    pub fn close_reports(&self, index: usize) -> Result<usize, SimError> {
        let p = self.profile(index)?;
        let udi = p.udi()?;
        let signer = Signer::derive(&self.cfg.device_secret, &udi.to_string())
            .map_err(|e| SimError::Internal(e.to_string()))?;
        let now = now_secs();
        let mut d = lock(self.device(index)?);
        let running = d.running(&p);
        let p = p.with_level(running);
        let start = d.window_start.min(now);
        let tags = p.entitlement_tags();
        for tag in &tags {
            let id = d.next_report_id;
            d.next_report_id += 1;
            let text = build_report(&p, &udi, &signer, id, tag, start, now)?;
            d.reports.push(StoredReport {
                id,
                end_time: now,
                acked: false,
                text: text.into_boxed_str(),
            });
            d.reports_generated += 1;
        }
        d.window_start = now;
        Ok(tags.len())
    }

    /// Unacknowledged report texts of device `index`, exactly as `GET /all-reports` lists them.
    pub fn unacked_reports(&self, index: usize) -> Result<Vec<String>, SimError> {
        let d = lock(self.device(index)?);
        Ok(d.reports
            .iter()
            .filter(|r| !r.acked)
            .map(|r| r.text.to_string())
            .collect())
    }

    /// Installs an ACK document (XML or base64) on device `index`.
    pub fn import_ack(&self, index: usize, doc: &str) -> Result<usize, SimError> {
        let r = self.import_inner(index, doc);
        match &r {
            Ok(_) => self.imports.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.import_failures.fetch_add(1, Ordering::Relaxed),
        };
        r
    }

    fn import_inner(&self, index: usize, doc: &str) -> Result<usize, SimError> {
        let udi = self.udi(index)?;
        let ack = parse_ack_document(doc).map_err(|e| SimError::BadRequest(e.to_string()))?;
        ack.verify(&self.cssm_public_key)
            .map_err(|e| SimError::BadRequest(format!("ACK not signed by CSSM: {e}")))?;
        if ack.body.sudi != udi {
            return Err(SimError::BadRequest(format!(
                "ACK is for {}, this device is {}",
                ack.body.sudi, udi
            )));
        }
        if ack.body.status != "ACK" {
            return Err(SimError::BadRequest(format!(
                "ACK status is {:?}",
                ack.body.status
            )));
        }
        // A policy sent with the ACK is verified like the ACK: one that fails refuses the import.
        if let Some(p) = &ack.policy {
            p.verify(&self.cssm_public_key).map_err(|e| {
                SimError::BadRequest(format!("policy sent with the ACK not signed by CSSM: {e}"))
            })?;
            if p.body.sudi != udi {
                return Err(SimError::BadRequest(format!(
                    "policy sent with the ACK is for {}, this device is {}",
                    p.body.sudi, udi
                )));
            }
        }
        // The state shows microseconds: keep what it shows.
        let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
        let mut d = lock(self.device(index)?);
        if !d.apply_acks {
            // Verified, answered SUCCESS, and dropped: nothing on the device moves.
            self.imports_not_applied.fetch_add(1, Ordering::Relaxed);
            return Ok(0);
        }
        let mut marked = 0;
        for r in d.reports.iter_mut() {
            if !r.acked && ack.body.report_ids.contains(&r.id) {
                r.acked = true;
                marked += 1;
            }
        }
        let acked = d.reports.iter().filter(|r| r.acked).count();
        if acked > KEEP_ACKED {
            let mut drop = acked - KEEP_ACKED;
            d.reports.retain(|r| {
                if r.acked && drop > 0 {
                    drop -= 1;
                    false
                } else {
                    true
                }
            });
        }
        if let Some(p) = &ack.policy {
            // Installed with the ACK: the state shows it and its install time, and the next
            // deadline follows it.
            d.policy = p.body.policy;
            d.policy_installed = now;
        }
        d.last_ack_time = Some(now);
        d.last_ack_valid = true;
        d.imports += 1;
        Ok(marked)
    }

    /// `show license status` of device `index`, as JSON.
    pub fn status(&self, index: usize) -> Result<serde_json::Value, SimError> {
        let info = self.info(index)?;
        let udi = self.udi(index)?;
        let p = self.profile(index)?;
        let d = lock(self.device(index)?);
        let next = self.ack_deadline(&d, &p);
        Ok(serde_json::json!({
            "udi": udi,
            "udi_string": udi.to_string(),
            "hostname": info.hostname,
            "model": info.model,
            "software_version": info.software_version,
            "network_license": info.network_license,
            "dna_tier": info.dna_tier,
            "smart_account": info.smart_account,
            "virtual_account": info.virtual_account,
            "is_cube": info.is_cube,
            "voice_role": info.voice_role,
            "last_ack_time": d.last_ack_time,
            "next_ack_deadline": next,
            "policy": d.policy,
            "restconf": d.restconf,
            "apply_acks": d.apply_acks,
            "last_ack_valid": d.last_ack_valid,
            "acked_reports": d.reports.iter().filter(|r| r.acked).count(),
            "unacked_reports": d.reports.iter().filter(|r| !r.acked).count(),
            "imports": d.imports,
            "reports_generated": d.reports_generated,
            "fault": d.fault,
            "configured_network_license": info.configured_network_license,
            "configured_dna_tier": info.configured_dna_tier,
            "pending_reload": info.pending_reload,
        }))
    }

    /// Fleet-wide counters (`GET /sim/summary`).
    pub fn summary(&self) -> serde_json::Value {
        let mut acked_devices = 0usize;
        let mut unacked = 0usize;
        let mut pending_reload = 0usize;
        for m in &self.devices {
            let d = lock(m);
            if d.last_ack_valid {
                acked_devices += 1;
            }
            unacked += d.reports.iter().filter(|r| !r.acked).count();
            pending_reload += usize::from(d.configured_level.is_some());
        }
        serde_json::json!({
            "devices": self.devices.len(),
            "acked_devices": acked_devices,
            "unacked_reports": unacked,
            "imports": self.imports.load(Ordering::Relaxed),
            "import_failures": self.import_failures.load(Ordering::Relaxed),
            "pending_reload": pending_reload,
            "boot_level_requests": self.boot_level_requests.load(Ordering::Relaxed),
            "imports_not_applied": self.imports_not_applied.load(Ordering::Relaxed),
            "state_requests": self.state_requests.load(Ordering::Relaxed),
        })
    }

    /// The device's own next ACK deadline: the earliest of its licenses' (the network license
    /// under the policy's perpetual row, a DNA add-on under its subscription row), from its last
    /// ACK (or from first use when it never took one). A device with only a perpetual license
    /// that the policy asks no periodic report for has none.
    fn ack_deadline(&self, d: &DeviceState, p: &Profile) -> Option<DateTime<Utc>> {
        let mut kinds = vec![LicenseKind::Perpetual];
        if d.running(p).1.is_some() {
            kinds.push(LicenseKind::Subscription);
        }
        kinds
            .into_iter()
            .filter_map(|k| {
                yang_state::device_ack_deadline(d.policy, k, self.first_use, d.last_ack_time)
            })
            .min()
    }

    /// Sets the policy device `index` runs (installed now, as an imported policy file is).
    pub fn set_policy(&self, index: usize, policy: SimPolicy) -> Result<(), SimError> {
        let mut d = lock(self.device(index)?);
        if d.policy != policy {
            d.policy = policy;
            d.policy_installed = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
        }
        Ok(())
    }

    /// Turns device `index`'s RESTCONF feature on or off.
    pub fn set_restconf(&self, index: usize, enabled: bool) -> Result<(), SimError> {
        lock(self.device(index)?).restconf = enabled;
        Ok(())
    }

    /// Off: device `index` answers 2xx to verified imports but applies none of them.
    pub fn set_apply_acks(&self, index: usize, apply: bool) -> Result<(), SimError> {
        lock(self.device(index)?).apply_acks = apply;
        Ok(())
    }

    /// Off: device `index` runs software whose model has no `rum-ack` container.
    pub fn set_rum_ack(&self, index: usize, present: bool) -> Result<(), SimError> {
        lock(self.device(index)?).rum_ack = present;
        Ok(())
    }

    /// When device `index` last took an ACK.
    pub fn last_ack_time(&self, index: usize) -> Result<Option<DateTime<Utc>>, SimError> {
        Ok(lock(self.device(index)?).last_ack_time)
    }

    /// Device `index`'s `cisco-smart-license:licensing` container (unqualified, see
    /// [`yang_state::select`]).
    pub fn licensing_state(&self, index: usize) -> Result<serde_json::Value, SimError> {
        let p = self.profile(index)?;
        let d = lock(self.device(index)?);
        Ok(yang_state::licensing(&StateView {
            policy: d.policy,
            policy_installed: d.policy_installed,
            last_ack: d.last_ack_time,
            next_ack_deadline: self.ack_deadline(&d, &p),
            pid: p.pid.to_owned(),
            serial: p.serial.clone(),
            rum_ack: d.rum_ack,
        }))
    }
}

fn build_report(
    p: &Profile,
    udi: &Udi,
    signer: &Signer,
    report_id: u64,
    tag: &str,
    start: i64,
    end: i64,
) -> Result<String, SimError> {
    let asset = p.family.asset();
    let payload = Payload {
        version: "2.0".into(),
        asset_identification: AssetIdentification {
            report_id,
            asset: Asset { name: asset.into() },
            instance: Instance { sudi: udi.clone() },
        },
        signature: InnerSignature {
            signing_type: "builtin".into(),
            key: asset.into(),
            value: signer.sign_b64(format!("{udi}|{report_id}|{tag}").as_bytes()),
        },
        meta: PayloadMeta {
            entitlement_tag: tag.into(),
            utility_enabled: false,
            software_version: p.software_version.into(),
            ha_udi: vec![],
        },
        measurements: vec![Measurement {
            log_time: end,
            metric_name: "ENTITLEMENT".into(),
            start_time: start,
            end_time: end,
            sample_interval: 3600,
            num_samples: ((end - start) / 3600).max(1),
            value: MeasurementValue {
                kind: "COUNT".into(),
                value: "1".into(),
            },
            meta: MeasurementMeta {
                termination_reason: "CloseReports".into(),
                ..MeasurementMeta::default()
            },
        }],
    };
    let payload_text =
        serde_json::to_string(&payload).map_err(|e| SimError::Internal(e.to_string()))?;
    let sig = ReportSignature {
        sudi: udi.clone(),
        signing_type: "builtin".into(),
        key: asset.into(),
        value: signer.sign_b64(payload_text.as_bytes()),
    };
    Ok(report_object(&payload_text, &sig))
}

// ---------------------------------------------------------------------------------------------
// HTTP

type Data = web::Data<FleetState>;

fn index_of(req: &HttpRequest, st: &FleetState) -> Result<usize, SimError> {
    let i: usize = req
        .match_info()
        .get("index")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| SimError::NotFound("bad device index".into()))?;
    st.device(i)?;
    Ok(i)
}

/// Device index after checking HTTP Basic credentials.
fn authed(req: &HttpRequest, st: &FleetState) -> Result<usize, SimError> {
    let i = index_of(req, st)?;
    match basic_credentials(req) {
        Some((u, p)) if u == st.cfg.username && p == st.cfg.password => Ok(i),
        _ => Err(SimError::Unauthorized),
    }
}

async fn close_reports(req: HttpRequest, st: Data) -> Result<HttpResponse, SimError> {
    let i = authed(&req, &st)?;
    let n = st.close_reports(i)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "SUCCESS", "closed": n})))
}

async fn list(req: HttpRequest, st: Data) -> Result<HttpResponse, SimError> {
    let i = authed(&req, &st)?;
    let d = lock(st.device(i)?);
    let items: Vec<_> = d
        .reports
        .iter()
        .map(|r| {
            serde_json::json!({
                "report_id": r.id,
                "timestamp": r.end_time,
                "state": if r.acked { "acknowledged" } else { "closed" },
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "usage_list": items })))
}

fn truncate(s: &str) -> &str {
    let mut n = s.len() / 2;
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    &s[..n]
}

fn strip_signature(text: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(mut v) => {
            if let Some(o) = v.as_object_mut() {
                o.remove("signature");
            }
            v.to_string()
        }
        Err(_) => text.to_owned(),
    }
}

/// Answers a report listing; `since` keeps reports ending at or after it (acknowledged ones too).
async fn reports_response(
    req: HttpRequest,
    st: Data,
    since: Option<i64>,
) -> Result<HttpResponse, SimError> {
    let i = authed(&req, &st)?;
    let (fault, texts) = {
        let d = lock(st.device(i)?);
        let texts: Vec<Box<str>> = d
            .reports
            .iter()
            .filter(|r| match since {
                Some(t) => r.end_time >= t,
                None => !r.acked,
            })
            .map(|r| r.text.clone())
            .collect();
        (d.fault, texts)
    };
    let synthetic = || -> Result<Box<str>, SimError> {
        let p = st.profile(i)?;
        let udi = p.udi()?;
        let signer = Signer::derive(&st.cfg.device_secret, &udi.to_string())
            .map_err(|e| SimError::Internal(e.to_string()))?;
        let tag = p.entitlement_tags().swap_remove(0);
        let now = now_secs();
        Ok(build_report(&p, &udi, &signer, 0, &tag, now - DAY, now)?.into_boxed_str())
    };
    let texts: Vec<String> = match fault {
        Fault::None | Fault::BootLevelRefused => texts.iter().map(|t| t.to_string()).collect(),
        Fault::Http500 => {
            return Ok(HttpResponse::InternalServerError()
                .json(serde_json::json!({"status": "FAILURE", "error": "internal error"})));
        }
        Fault::Slow => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            texts.iter().map(|t| t.to_string()).collect()
        }
        Fault::MalformedEnvelope => {
            let mut v: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
            match v.pop() {
                Some(last) => v.push(truncate(&last).to_owned()),
                None => v.push(truncate(&synthetic()?).to_owned()),
            }
            v
        }
        Fault::MissingSignature => {
            if texts.is_empty() {
                vec![strip_signature(&synthetic()?)]
            } else {
                texts.iter().map(|t| strip_signature(t)).collect()
            }
        }
    };
    let len: usize = texts.iter().map(|t| t.len() + 1).sum();
    let mut body = String::with_capacity(len + 16);
    body.push_str("{\"usage\":[");
    for (k, t) in texts.iter().enumerate() {
        if k > 0 {
            body.push(',');
        }
        body.push_str(t);
    }
    body.push_str("]}");
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

async fn all_reports(req: HttpRequest, st: Data) -> Result<HttpResponse, SimError> {
    reports_response(req, st, None).await
}

async fn days_default(req: HttpRequest, st: Data) -> Result<HttpResponse, SimError> {
    reports_response(req, st, Some(now_secs() - 90 * DAY)).await
}

async fn days_n(req: HttpRequest, st: Data) -> Result<HttpResponse, SimError> {
    let n: i64 = req
        .match_info()
        .get("n")
        .and_then(|s| s.parse().ok())
        .filter(|n| (0..=36_500).contains(n))
        .ok_or_else(|| SimError::BadRequest("days must be a number of days".into()))?;
    reports_response(req, st, Some(now_secs() - n * DAY)).await
}

#[derive(Deserialize)]
struct AckWrapper {
    ack: String,
}

async fn import(req: HttpRequest, st: Data, body: web::Bytes) -> Result<HttpResponse, SimError> {
    let i = authed(&req, &st)?;
    let text = match std::str::from_utf8(&body) {
        Ok(t) => t.trim(),
        Err(_) => {
            st.import_failures.fetch_add(1, Ordering::Relaxed);
            return Err(SimError::BadRequest("import body is not UTF-8".into()));
        }
    };
    let doc = if text.starts_with('{') {
        match serde_json::from_str::<AckWrapper>(text) {
            Ok(w) => w.ack,
            Err(e) => {
                st.import_failures.fetch_add(1, Ordering::Relaxed);
                return Err(SimError::BadRequest(format!("bad JSON wrapper: {e}")));
            }
        }
    } else {
        text.to_owned()
    };
    let marked = st.import_ack(i, &doc)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "SUCCESS", "acknowledged": marked})))
}

async fn status(req: HttpRequest, st: Data) -> Result<HttpResponse, SimError> {
    let i = index_of(&req, &st)?;
    Ok(HttpResponse::Ok().json(st.status(i)?))
}

#[derive(Deserialize)]
struct FaultReq {
    kind: Fault,
}

async fn fault(
    req: HttpRequest,
    st: Data,
    body: web::Json<FaultReq>,
) -> Result<HttpResponse, SimError> {
    let i = index_of(&req, &st)?;
    st.set_fault(i, body.kind)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "SUCCESS", "fault": body.kind})))
}

#[derive(Deserialize)]
struct DevicesQuery {
    format: Option<String>,
}

async fn devices(st: Data, q: web::Query<DevicesQuery>) -> Result<HttpResponse, SimError> {
    let csv = q.format.as_deref() == Some("csv");
    let st2 = st.clone();
    let body = web::block(move || -> Result<String, SimError> {
        if csv {
            let mut out = String::with_capacity(st2.len() * 200 + 256);
            out.push_str(CSV_HEADER);
            out.push('\n');
            for i in 0..st2.len() {
                let d = st2.info(i)?;
                out.push_str(&format!(
                    "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                    d.index,
                    d.hostname,
                    d.udi_pid,
                    d.serial,
                    d.model,
                    d.software_version,
                    d.base_url,
                    d.site,
                    d.smart_account,
                    d.virtual_account,
                    d.network_license,
                    d.dna_tier.unwrap_or_default(),
                    d.is_cube,
                    d.username,
                    d.password,
                    d.configured_network_license,
                    d.configured_dna_tier.unwrap_or_default(),
                    d.pending_reload,
                    d.voice_role
                ));
            }
            Ok(out)
        } else {
            let all = (0..st2.len())
                .map(|i| st2.info(i))
                .collect::<Result<Vec<_>, _>>()?;
            serde_json::to_string(&all).map_err(|e| SimError::Internal(e.to_string()))
        }
    })
    .await
    .map_err(|e| SimError::Internal(e.to_string()))??;
    Ok(HttpResponse::Ok()
        .content_type(if csv {
            "text/csv; charset=utf-8"
        } else {
            "application/json"
        })
        .body(body))
}

async fn summary(st: Data) -> HttpResponse {
    HttpResponse::Ok().json(st.summary())
}

/// Device index for a RESTCONF call: credentials checked, `http_500` fault applied.
fn restconf_device(req: &HttpRequest, st: &FleetState) -> Result<(usize, Fault), RestconfError> {
    st.boot_level_requests.fetch_add(1, Ordering::Relaxed);
    restconf_auth(req, st)
}

/// RESTCONF-enabled check first (a device without the feature answers 404 whatever the
/// credentials), then credentials and the `http_500` fault.
fn restconf_auth(req: &HttpRequest, st: &FleetState) -> Result<(usize, Fault), RestconfError> {
    let i = index_of(req, st)?;
    if !lock(st.device(i)?).restconf {
        return Err(RestconfError::not_enabled());
    }
    let i = authed(req, st)?;
    let fault = lock(st.device(i)?).fault;
    if fault == Fault::Http500 {
        return Err(RestconfError::operation_failed());
    }
    Ok((i, fault))
}

async fn get_boot_level(req: HttpRequest, st: Data) -> Result<HttpResponse, RestconfError> {
    let (i, _) = restconf_device(&req, &st)?;
    let level = st.configured_level(i)?;
    Ok(HttpResponse::Ok()
        .content_type(YANG_JSON)
        .body(level_json(level).to_string()))
}

/// PUT replaces the level, PATCH merges into it (RFC 8040); either only configures it: the device
/// runs the new level after its next reload.
async fn set_boot_level(
    req: HttpRequest,
    st: Data,
    body: web::Bytes,
) -> Result<HttpResponse, RestconfError> {
    let (i, fault) = restconf_device(&req, &st)?;
    let ct = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if ct.split(';').next().map(str::trim) != Some(YANG_JSON) {
        return Err(RestconfError::unsupported_media_type(ct));
    }
    let merge_into = if req.method() == actix_web::http::Method::PATCH {
        Some(st.configured_level(i)?)
    } else {
        None
    };
    let level = parse_level(&body, merge_into)?;
    if fault == Fault::BootLevelRefused {
        return Err(RestconfError::lock_denied());
    }
    st.set_configured_level(i, level)?;
    Ok(HttpResponse::NoContent().finish())
}

/// `GET <base>/restconf/data/cisco-smart-license:licensing[/<path>]`: the operational state
/// (see [`crate::yang_state`]).
async fn get_licensing(req: HttpRequest, st: Data) -> Result<HttpResponse, RestconfError> {
    st.state_requests.fetch_add(1, Ordering::Relaxed);
    let (i, _) = restconf_auth(&req, &st)?;
    let accept = req
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("*/*");
    let ok = accept.split(',').any(|m| {
        let m = m.split(';').next().unwrap_or_default().trim();
        matches!(m, "*/*" | "application/*" | YANG_JSON)
    });
    if !ok {
        return Err(RestconfError::not_acceptable(accept));
    }
    let path = req.match_info().get("path").unwrap_or_default().to_owned();
    let tree = st.licensing_state(i)?;
    let node = yang_state::select(tree, &path).ok_or_else(|| RestconfError::no_such_node(&path))?;
    Ok(HttpResponse::Ok()
        .content_type(YANG_JSON)
        .body(node.to_string()))
}

/// Simulation knobs of one device (or, fleet-wide, of the listed `indexes`); absent ones are
/// left as they are.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KnobsReq {
    #[serde(default)]
    indexes: Option<Vec<usize>>,
    policy: Option<SimPolicy>,
    restconf: Option<bool>,
    apply_acks: Option<bool>,
    rum_ack: Option<bool>,
}

fn apply_knobs(st: &FleetState, i: usize, k: &KnobsReq) -> Result<(), SimError> {
    st.device(i)?;
    if let Some(p) = k.policy {
        st.set_policy(i, p)?;
    }
    if let Some(r) = k.restconf {
        st.set_restconf(i, r)?;
    }
    if let Some(a) = k.apply_acks {
        st.set_apply_acks(i, a)?;
    }
    if let Some(r) = k.rum_ack {
        st.set_rum_ack(i, r)?;
    }
    Ok(())
}

async fn device_knobs(
    req: HttpRequest,
    st: Data,
    body: web::Json<KnobsReq>,
) -> Result<HttpResponse, SimError> {
    let i = index_of(&req, &st)?;
    if body.indexes.is_some() {
        return Err(SimError::BadRequest(
            "indexes belong to the fleet-wide /sim/knobs".into(),
        ));
    }
    apply_knobs(&st, i, &body)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "SUCCESS", "devices": 1})))
}

async fn fleet_knobs(st: Data, body: web::Json<KnobsReq>) -> Result<HttpResponse, SimError> {
    let indexes = body
        .indexes
        .clone()
        .ok_or_else(|| SimError::BadRequest("give the devices' indexes".into()))?;
    if let Some(bad) = indexes.iter().find(|i| **i >= st.len()) {
        return Err(SimError::NotFound(format!("no device {bad}")));
    }
    for i in &indexes {
        apply_knobs(&st, *i, &body)?;
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "SUCCESS", "devices": indexes.len()})))
}

async fn reload_device(req: HttpRequest, st: Data) -> Result<HttpResponse, SimError> {
    let i = index_of(&req, &st)?;
    let changed = st.reload(i)?;
    Ok(HttpResponse::Ok().json(
        serde_json::json!({"status": "SUCCESS", "reloaded": 1, "changed": usize::from(changed)}),
    ))
}

/// Which devices `POST /sim/reload` reloads: all, one site's, or the listed ones.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReloadReq {
    site: Option<String>,
    indexes: Option<Vec<usize>>,
}

async fn reload_fleet(st: Data, body: web::Bytes) -> Result<HttpResponse, SimError> {
    let sel: ReloadReq = if body.iter().all(u8::is_ascii_whitespace) {
        ReloadReq::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            SimError::BadRequest(format!("expected {{\"site\"}} or {{\"indexes\"}}: {e}"))
        })?
    };
    let st2 = st.clone();
    let (reloaded, changed) = web::block(move || -> Result<(usize, usize), SimError> {
        let indexes: Vec<usize> = match (sel.site, sel.indexes) {
            (Some(_), Some(_)) => {
                return Err(SimError::BadRequest(
                    "give site or indexes, not both".into(),
                ));
            }
            (None, Some(list)) => {
                if let Some(bad) = list.iter().find(|i| **i >= st2.len()) {
                    return Err(SimError::NotFound(format!("no device {bad}")));
                }
                list
            }
            (Some(site), None) => (0..st2.len())
                .filter(|i| st2.profile(*i).is_ok_and(|p| p.site == site))
                .collect(),
            (None, None) => (0..st2.len()).collect(),
        };
        let mut changed = 0;
        for i in &indexes {
            changed += usize::from(st2.reload(*i)?);
        }
        Ok((indexes.len(), changed))
    })
    .await
    .map_err(|e| SimError::Internal(e.to_string()))??;
    Ok(HttpResponse::Ok()
        .json(serde_json::json!({"status": "SUCCESS", "reloaded": reloaded, "changed": changed})))
}

/// Any other RESTCONF path: 404 (plain when the feature is off, a RESTCONF error otherwise).
async fn no_restconf_resource(req: HttpRequest, st: Data) -> Result<HttpResponse, RestconfError> {
    restconf_auth(&req, &st)?;
    Err(RestconfError::no_such_node(req.path()))
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/d/{index}")
            .route(
                "/smartlic-service/close-reports",
                web::post().to(close_reports),
            )
            .route("/smartlic-service/list", web::get().to(list))
            .route("/smartlic-service/all-reports", web::get().to(all_reports))
            .route("/smartlic-service/days", web::get().to(days_default))
            .route("/smartlic-service/days/{n}", web::get().to(days_n))
            .service(
                web::resource("/smartlic-service/import")
                    .app_data(web::PayloadConfig::new(MAX_IMPORT_BYTES))
                    .route(web::post().to(import)),
            )
            .service(
                web::resource("/restconf/data/Cisco-IOS-XE-native:native/license/boot/level")
                    .route(web::get().to(get_boot_level))
                    .route(web::put().to(set_boot_level))
                    .route(web::patch().to(set_boot_level)),
            )
            .route(
                "/restconf/data/cisco-smart-license:licensing",
                web::get().to(get_licensing),
            )
            .route(
                "/restconf/data/cisco-smart-license:licensing/{path:.*}",
                web::get().to(get_licensing),
            )
            .route("/restconf/{rest:.*}", web::to(no_restconf_resource))
            .route("/sim/status", web::get().to(status))
            .route("/sim/fault", web::post().to(fault))
            .route("/sim/reload", web::post().to(reload_device))
            .route("/sim/knobs", web::post().to(device_knobs)),
    )
    .route("/sim/knobs", web::post().to(fleet_knobs))
    .route("/sim/devices", web::get().to(devices))
    .route("/sim/summary", web::get().to(summary))
    .route("/sim/reload", web::post().to(reload_fleet));
}

fn build(cfg: FleetConfig) -> std::io::Result<(SocketAddr, Server, Arc<FleetState>)> {
    let bind = cfg.bind;
    let state = Arc::new(FleetState::new(cfg).map_err(io_err)?);
    let data = web::Data::from(state.clone());
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 4);
    let server = HttpServer::new(move || App::new().app_data(data.clone()).configure(routes))
        .workers(workers)
        .keep_alive(Duration::from_secs(75))
        // Thousands of connections open at once on a busy machine: be patient with slow requests.
        .client_request_timeout(Duration::from_secs(30))
        .backlog(4096)
        .bind(bind)?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| io_err("server bound no address"))?;
    state.set_addr(addr);
    tracing::info!(%addr, devices = state.len(), "device fleet simulator listening");
    Ok((addr, server.run(), state))
}

/// Binds, starts the fleet server in the background and returns its address, a handle to stop
/// it, and its state.
pub async fn start_fleet(
    cfg: FleetConfig,
) -> std::io::Result<(SocketAddr, ServerHandle, Arc<FleetState>)> {
    let (addr, server, state) = build(cfg)?;
    let handle = server.handle();
    tokio::spawn(server);
    Ok((addr, handle, state))
}

/// Runs the fleet server until it stops.
pub async fn run_fleet(cfg: FleetConfig) -> std::io::Result<()> {
    let (_, server, _) = build(cfg)?;
    server.await
}
