//! End-to-end harness: runs the real `tally` binary (`serve`, `sim fleet`, `sim cssm`) as child
//! processes against a per-test Postgres database and a per-test NATS namespace, and drives them
//! through their HTTP APIs only: Tally's through [`tally_client`], the simulators' test hooks
//! directly. The tests (`tests/*.rs`) `use tally_e2e::...`.
// Test support: a failed step panics with what it was doing, as the test would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
pub use tally_client::Client;
use tally_testkit::TestDb;
use tokio::process::{Child, Command};

pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";
pub const VIEWER_TOKEN: &str = "e2e-viewer-token-0123456789";
const SECRET_KEY: &str = "e2e-secret-key-0123456789abcdef";
const CSSM_CLIENT_ID: &str = "tally";
const CSSM_CLIENT_SECRET: &str = "tally-sim-secret";

/// The `tally` binary: `$TALLY_BIN`, else `<target dir>/debug/tally`.
pub fn tally_bin() -> PathBuf {
    let path = match std::env::var_os("TALLY_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
            target.join("debug").join("tally")
        }
    };
    assert!(
        path.is_file(),
        "tally binary not found at {}: run `cargo build -p tally` first (or set TALLY_BIN)",
        path.display()
    );
    path
}

pub fn nats_url() -> String {
    std::env::var("TALLY_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

pub fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    l.local_addr().expect("local addr").port()
}

pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("building the HTTP client")
}

/// A child process whose output goes to a log file; killed when dropped. When the test panics
/// the log's path and tail are printed.
pub struct Proc {
    name: String,
    bin: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(name: &str, tag: &str, args: &[String], envs: &[(String, String)]) -> Self {
        let log = std::env::temp_dir().join(format!("tally-e2e-{tag}-{name}.log"));
        let _ = std::fs::remove_file(&log);
        eprintln!("[e2e] {name}: log at {}", log.display());
        let mut p = Proc {
            name: name.to_owned(),
            bin: tally_bin(),
            args: args.to_vec(),
            envs: envs.to_vec(),
            log,
            child: None,
        };
        p.start();
        p
    }

    /// Starts (or restarts) the process with the same arguments and environment.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening log file");
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args);
        // Nothing from the caller's environment configures the child but what we set here.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("TALLY_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("RUST_LOG", "warn")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("cloning log handle"))
            .stderr(file)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {} ({}): {e}", self.name, self.bin.display()));
        self.child = Some(child);
    }

    /// SIGKILL, and reap.
    pub async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    /// Panics (with the log) if the process has exited.
    pub fn assert_running(&mut self) {
        let exited = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = exited {
            panic!(
                "{} exited unexpectedly ({status}); log {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 60)
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "[e2e] ---- {} log ({}), last lines ----\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 40)
            );
        }
    }
}

fn tail(path: &PathBuf, n: usize) -> String {
    let Ok(f) = std::fs::File::open(path) else {
        return String::from("<no log>");
    };
    let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

async fn wait_http_ok(http: &reqwest::Client, url: &str, proc: &mut Proc, within: Duration) {
    wait_until_up(url, proc, within, || async {
        http.get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
}

/// Until `up` answers true, as long as `proc` runs; `url` names what is awaited if it never does.
async fn wait_until_up<F, Fut>(url: &str, proc: &mut Proc, within: Duration, mut up: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        proc.assert_running();
        if up().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} not ready within {within:?}; log {}:\n{}",
            proc.log.display(),
            tail(&proc.log, 40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    let r = http
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    assert!(status.is_success(), "GET {url}: HTTP {status}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: bad JSON ({e}): {text}"))
}

/// `tally sim fleet`.
pub struct Fleet {
    pub proc: Proc,
    pub base: String,
    pub devices: usize,
    http: reqwest::Client,
}

impl Fleet {
    pub async fn start(tag: &str, devices: usize) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let args = [
            "sim",
            "fleet",
            "--devices",
            &devices.to_string(),
            "--listen",
            &addr,
        ]
        .map(String::from);
        let mut proc = Proc::spawn("fleet", tag, &args, &[]);
        let http = http_client();
        let base = format!("http://{addr}");
        wait_http_ok(
            &http,
            &format!("{base}/sim/summary"),
            &mut proc,
            Duration::from_secs(30),
        )
        .await;
        Fleet {
            proc,
            base,
            devices,
            http,
        }
    }

    /// The fleet's devices as inventory import rows (simulator-only fields removed).
    pub async fn inventory_rows(&self) -> Vec<Value> {
        let devices = get_json(&self.http, &format!("{}/sim/devices", self.base)).await;
        let rows: Vec<Value> = devices
            .as_array()
            .expect("/sim/devices is an array")
            .iter()
            .cloned()
            .map(|mut d| {
                let o = d.as_object_mut().expect("device object");
                // tally_sim::SIM_ONLY_FIELDS (e2e drives the binary and does not link the sim).
                for k in [
                    "index",
                    "configured_network_license",
                    "configured_dna_tier",
                    "pending_reload",
                ] {
                    o.remove(k);
                }
                d
            })
            .collect();
        assert_eq!(rows.len(), self.devices);
        rows
    }

    pub async fn summary(&self) -> Value {
        get_json(&self.http, &format!("{}/sim/summary", self.base)).await
    }

    /// Every device's `show license status` (`/d/<index>/sim/status`), in index order: among
    /// other things how many ACKs it imported (`imports`).
    pub async fn device_statuses(&self) -> Vec<Value> {
        use futures::StreamExt;
        futures::stream::iter(0..self.devices)
            .map(|i| {
                let url = format!("{}/d/{i}/sim/status", self.base);
                async move { get_json(&self.http, &url).await }
            })
            .buffered(32)
            .collect()
            .await
    }
}

/// `tally sim cssm`.
pub struct Cssm {
    pub proc: Proc,
    pub base: String,
    http: reqwest::Client,
}

impl Cssm {
    /// Its license pools match `fleet` (same size, default seed), as Tally will see it.
    pub async fn start(tag: &str, processing_delay_ms: u64, fleet: &Fleet) -> Self {
        Self::start_with(tag, processing_delay_ms, fleet, &[]).await
    }

    /// As [`Cssm::start`], with more `tally sim cssm` arguments (`--only-virtual-accounts ...`).
    pub async fn start_with(
        tag: &str,
        processing_delay_ms: u64,
        fleet: &Fleet,
        extra: &[&str],
    ) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut args: Vec<String> = [
            "sim",
            "cssm",
            "--listen",
            &addr,
            "--processing-delay-ms",
            &processing_delay_ms.to_string(),
            "--fleet-devices",
            &fleet.devices.to_string(),
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let mut proc = Proc::spawn("cssm", tag, &args, &[]);
        let http = http_client();
        let base = format!("http://{addr}");
        wait_http_ok(
            &http,
            &format!("{base}/sim/stats"),
            &mut proc,
            Duration::from_secs(30),
        )
        .await;
        Cssm { proc, base, http }
    }

    pub async fn stats(&self) -> Value {
        get_json(&self.http, &format!("{}/sim/stats", self.base)).await
    }

    /// What the CSSM portal does with an offline usage bundle: answers the ACK bundle.
    pub async fn offline_usage(&self, bundle: Vec<u8>) -> Vec<u8> {
        let r = self
            .http
            .post(format!("{}/sim/offline/usage", self.base))
            .header("content-type", "application/gzip")
            .body(bundle)
            .send()
            .await
            .expect("POST /sim/offline/usage");
        let status = r.status();
        let body = r.bytes().await.expect("reading the ACK bundle");
        assert!(
            status.is_success(),
            "/sim/offline/usage: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
        body.to_vec()
    }
}

pub enum Uplink<'a> {
    Online(&'a Cssm),
    Offline,
}

/// `tally serve` with its own database and NATS namespace, or one of several replicas sharing
/// both ([`Tally::spawn`]).
pub struct Tally {
    pub proc: Proc,
    pub base: String,
    pub api: String,
    pub db: Arc<TestDb>,
    pub namespace: String,
    /// Its REST API with the admin token.
    pub client: Client,
}

impl Tally {
    /// `tally serve --target all` on a fresh database and namespace, ready.
    pub async fn start(tag: &str, uplink: Uplink<'_>) -> Self {
        let db = Arc::new(TestDb::new().await.expect("creating the test database"));
        let mut t = Self::spawn("tally", tag, db, &format!("e2e{tag}"), uplink, &[]);
        t.wait_ready().await;
        t
    }

    /// Starts `tally serve` named `name` (its log is `tally-e2e-<tag>-<name>.log`) on `db` and
    /// NATS namespace `namespace`, without waiting for it to be ready. `extra` is added to the
    /// environment last, so it can override any default (`TALLY_TARGET`, `TALLY_DATABASE_URL`,
    /// `RUST_LOG`, ...).
    pub fn spawn(
        name: &str,
        tag: &str,
        db: Arc<TestDb>,
        namespace: &str,
        uplink: Uplink<'_>,
        extra: &[(String, String)],
    ) -> Self {
        let namespace = namespace.to_owned();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut envs: Vec<(String, String)> = vec![
            ("TALLY_LISTEN".into(), addr.clone()),
            ("TALLY_DATABASE_URL".into(), db.url.clone()),
            ("TALLY_NATS_URL".into(), nats_url()),
            ("TALLY_NATS_NAMESPACE".into(), namespace.clone()),
            (
                "TALLY_API_TOKENS".into(),
                format!("admin:{ADMIN_TOKEN},viewer:{VIEWER_TOKEN}"),
            ),
            ("TALLY_SECRET_KEY".into(), SECRET_KEY.into()),
            ("TALLY_POLL_INITIAL_MS".into(), "300".into()),
        ];
        match uplink {
            Uplink::Online(cssm) => envs.extend([
                ("TALLY_UPLINK_MODE".into(), "online".into()),
                (
                    "TALLY_CSSM_API_BASE".into(),
                    format!("{}/services/api/smart-accounts-and-licensing/", cssm.base),
                ),
                (
                    "TALLY_CSSM_TOKEN_URL".into(),
                    format!("{}/oauth2/v1/token", cssm.base),
                ),
                ("TALLY_CSSM_CLIENT_ID".into(), CSSM_CLIENT_ID.into()),
                ("TALLY_CSSM_CLIENT_SECRET".into(), CSSM_CLIENT_SECRET.into()),
            ]),
            Uplink::Offline => envs.push(("TALLY_UPLINK_MODE".into(), "offline".into())),
        }
        envs.extend(extra.iter().cloned());
        let proc = Proc::spawn(name, tag, &["serve".to_owned()], &envs);
        let base = format!("http://{addr}");
        Tally {
            proc,
            api: format!("{base}/api/v1"),
            client: Client::with_http(http_client(), &base, ADMIN_TOKEN),
            base,
            db,
            namespace,
        }
    }

    pub async fn wait_ready(&mut self) {
        let url = format!("{}/readyz", self.base);
        let client = &self.client;
        wait_until_up(&url, &mut self.proc, Duration::from_secs(60), || {
            client.ready()
        })
        .await;
    }

    /// SIGKILL the server (no graceful shutdown).
    pub async fn kill9(&mut self) {
        self.proc.kill9().await;
    }

    /// Starts the server again with the identical environment and waits for readiness.
    pub async fn restart(&mut self) {
        self.proc.start();
        self.wait_ready().await;
    }

    pub async fn get(&self, path: &str) -> Value {
        self.client
            .get(path)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Value {
        self.client
            .post(path, body)
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    pub async fn post_bytes(&self, path: &str, content_type: &str, body: Vec<u8>) -> Vec<u8> {
        self.client
            .post_bytes(path, content_type, body)
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// Imports the fleet and waits until the collector knows every device.
    pub async fn import_fleet(&self, fleet: &Fleet) {
        self.import_fleet_via(fleet, self).await;
    }

    /// Imports the fleet through this server (inventory) and waits until `collector` (a server
    /// running rum-aggregator) knows every device.
    pub async fn import_fleet_via(&self, fleet: &Fleet, collector: &Tally) {
        let rows = fleet.inventory_rows().await;
        let r: Value = self
            .client
            .import_devices(&rows)
            .await
            .unwrap_or_else(|e| panic!("POST /devices/import: {e}"));
        assert_eq!(r["total"], fleet.devices, "import result {r}");
        assert_eq!(r["created"], fleet.devices, "import result {r}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s: Value = collector
                .client
                .collector_status()
                .await
                .unwrap_or_else(|e| panic!("GET /collector/status: {e}"));
            if s["devices_known"] == fleet.devices {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "collector knows {} of {} devices after 60 s",
                s["devices_known"],
                fleet.devices
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Starts a cycle; its id.
    pub async fn start_cycle(&self) -> String {
        let r = self
            .client
            .start_cycle::<Value>()
            .await
            .unwrap_or_else(|e| panic!("POST /cycles: {e}"));
        assert_eq!(r.status.as_u16(), 202, "POST /cycles status");
        r.body["id"].as_str().expect("cycle id").to_owned()
    }

    pub async fn cycle(&self, id: &str) -> Value {
        self.client
            .cycle(id)
            .await
            .unwrap_or_else(|e| panic!("GET /cycles/{id}: {e}"))
    }

    pub async fn cycle_failures(&self, id: &str) -> Value {
        self.client
            .cycle_failures(id)
            .await
            .unwrap_or_else(|e| panic!("GET /cycles/{id}/failures: {e}"))
    }

    /// POSTs an empty body with the admin token; the status and JSON body, whatever the status.
    pub async fn post_any(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .request(tally_client::Method::POST, path)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `tally_events_total{kind="<kind>"}` of this process (0 when not counted yet).
    pub async fn events_total(&self, kind: &str) -> u64 {
        let text = self
            .client
            .metrics()
            .await
            .unwrap_or_else(|e| panic!("GET {}/metrics: {e}", self.base));
        let key = format!("tally_events_total{{kind=\"{kind}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .map_or(0, |v| v.trim().parse().expect("counter value"))
    }

    /// Polls the cycle until it leaves `running`; panics (with the last view and the failures)
    /// after `within`, or if it ends in any state but `complete`.
    pub async fn wait_cycle_complete(&mut self, id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            self.proc.assert_running();
            let c = self.cycle(id).await;
            if c["state"] != "running" {
                if c["state"] != "complete" {
                    let failures = self.cycle_failures(id).await;
                    panic!("cycle ended {}: {c:#}\nfailures: {failures:#}", c["state"]);
                }
                return c;
            }
            if Instant::now() > deadline {
                let failures = self.cycle_failures(id).await;
                // Best effort: a replica without cssm-uplink has no such route.
                let uplink: Value = match self.client.uplink_status().await {
                    Ok(v) => v,
                    Err(e) => match e.status() {
                        Some(status) => format!("HTTP {status}").into(),
                        None => e.to_string().into(),
                    },
                };
                panic!(
                    "cycle still running after {within:?}: {c:#}\nuplink: {uplink:#}\nfailures: {failures:#}"
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Every device's ACK import of a cycle was read back from the device: its last ACK received
/// moved (`confirmed`), none is `unconfirmed` or `not_applied`.
pub async fn assert_all_confirmed(tally: &Tally, n: usize) {
    let page = |c: &str| format!("/ack-imports?confirmation={c}&limit=1000");
    let mut confirmed = 0;
    let mut offset = 0;
    loop {
        let rows = tally
            .get(&format!("{}&offset={offset}", page("confirmed")))
            .await;
        let k = rows.as_array().map_or(0, Vec::len);
        confirmed += k;
        offset += k;
        if k < 1000 {
            break;
        }
    }
    assert_eq!(confirmed, n, "ACK imports confirmed by read-back");
    for other in ["unconfirmed", "not_applied"] {
        let rows = tally.get(&page(other)).await;
        assert_eq!(rows, serde_json::json!([]), "{other} ACK imports");
    }
}

/// The usual stack: a fleet of `devices`, a CSSM whose pools match it (answering polls after
/// `processing_delay_ms`), and `tally serve` online against that CSSM, with the fleet imported.
pub struct Online {
    pub fleet: Fleet,
    pub cssm: Cssm,
    pub tally: Tally,
}

impl Online {
    pub async fn start(devices: usize, processing_delay_ms: u64) -> Self {
        let tag = random_hex();
        let fleet = Fleet::start(&tag, devices).await;
        let cssm = Cssm::start(&tag, processing_delay_ms, &fleet).await;
        let tally = Tally::start(&tag, Uplink::Online(&cssm)).await;
        tally.import_fleet(&fleet).await;
        Online { fleet, cssm, tally }
    }
}

/// True once every device of the cycle has been collected (successfully or not).
pub fn collection_done(c: &Value) -> bool {
    let col = &c["collection"];
    col["started"] == true
        && col["devices_ok"].as_i64().unwrap_or(0) + col["devices_failed"].as_i64().unwrap_or(0)
            >= col["devices"].as_i64().unwrap_or(i64::MAX)
}

/// The end state every clean cycle must reach: every device collected and acknowledged, every
/// stored report uploaded exactly once, and the devices and CSSM agree.
pub fn assert_clean_cycle(n: usize, cycle: &Value, summary: &Value, stats: &Value) {
    let ctx = format!("cycle {cycle:#}\nfleet {summary:#}\nCSSM {stats:#}");
    let n = n as u64;
    let col = &cycle["collection"];
    let stored = col["reports_stored"].as_u64().expect("reports_stored");
    assert_eq!(cycle["state"], "complete", "{ctx}");
    assert_eq!(col["devices_ok"].as_u64(), Some(n), "devices_ok\n{ctx}");
    assert_eq!(
        cycle["ack"]["devices_expected"].as_u64(),
        Some(n),
        "ack.devices_expected\n{ctx}"
    );
    assert_eq!(
        cycle["ack"]["devices_imported"].as_u64(),
        Some(n),
        "ack.devices_imported\n{ctx}"
    );
    assert!(stored > 0, "no reports stored\n{ctx}");
    assert_eq!(
        cycle["upload"]["reports_uploaded"].as_u64(),
        Some(stored),
        "upload.reports_uploaded == collection.reports_stored\n{ctx}"
    );
    assert_eq!(
        summary["acked_devices"].as_u64(),
        Some(n),
        "fleet acked_devices\n{ctx}"
    );
    assert_eq!(
        summary["unacked_reports"].as_u64(),
        Some(0),
        "fleet unacked_reports\n{ctx}"
    );
    assert_eq!(
        stats["duplicates"].as_u64(),
        Some(0),
        "CSSM duplicates\n{ctx}"
    );
    assert_eq!(
        stats["signature_failures"].as_u64(),
        Some(0),
        "CSSM signature_failures\n{ctx}"
    );
    assert_eq!(
        stats["reports_accepted"].as_u64(),
        Some(stored),
        "CSSM reports_accepted == collection.reports_stored\n{ctx}"
    );
}
