//! `tally demo`: everything on one machine. Starts a simulated fleet and a simulated CSSM, runs
//! all services in this process against a fresh demo database, imports the fleet into the
//! inventory through the API, runs one license cycle, and checks on the devices themselves that
//! each holds an ACK the simulated CSSM signed.

use crate::serve::{ServeArgs, Target};
use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};
use std::{net::SocketAddr, time::Duration, time::Instant};

#[derive(Args, Debug)]
pub struct DemoArgs {
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Admin connection; the demo (re)creates its own database next to it.
    #[arg(
        long,
        env = "TALLY_DEMO_ADMIN_DB",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub admin_db: String,
    #[arg(long, default_value = "tally_demo")]
    pub database: String,
    #[arg(long, env = "TALLY_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub fleet_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9200")]
    pub cssm_listen: SocketAddr,
    /// `online` (CSSM API) or `offline` (export a bundle, hand it to CSSM, import the ACKs).
    #[arg(long, default_value = "online")]
    pub mode: tally_cssm_uplink::Mode,
    /// Stop after the cycle instead of serving until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
    /// Drive an already running Tally at this base URL instead of starting one (benchmarks).
    #[arg(long, requires_all = ["token", "fleet_url", "cssm_url"])]
    pub tally_url: Option<String>,
    /// Admin token of the running Tally given with `--tally-url`.
    #[arg(long, env = "TALLY_DEMO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A running fleet simulator (`tally sim fleet`) instead of an in-process one.
    #[arg(long)]
    pub fleet_url: Option<String>,
    /// A running CSSM simulator (`tally sim cssm`) instead of an in-process one.
    #[arg(long)]
    pub cssm_url: Option<String>,
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn recreate_db(admin: &str, name: &str) -> anyhow::Result<String> {
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        bail!("database name {name:?} must be letters, digits and _");
    }
    let (client, conn) = tokio_postgres::connect(admin, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to Postgres at {admin}"))?;
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await?;
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    let base = admin.rsplit_once('/').map_or(admin, |(b, _)| b);
    Ok(format!("{base}/{name}"))
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("{path}: HTTP {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let n = args.devices;
    println!("Tally demo: {n} simulated devices, a simulated CSSM, all services in one process");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()?;
    let (fleet, cssm, base, token, server) = match (
        &args.tally_url,
        &args.token,
        &args.fleet_url,
        &args.cssm_url,
    ) {
        (Some(t), Some(k), Some(f), Some(c)) => (
            f.clone(),
            c.clone(),
            t.trim_end_matches('/').to_owned(),
            k.clone(),
            None,
        ),
        _ => {
            let (fleet, cssm, base, token, server) = start_in_process(&args).await?;
            (fleet, cssm, base, token, Some(server))
        }
    };
    let api = Api {
        http: http.clone(),
        base: format!("{base}/api/v1"),
        token: token.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(server) = &server
            && server.is_finished()
        {
            bail!("tally stopped during start-up (see the log above)");
        }
        if http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "tally was not ready within 60 s (is NATS >= 2.10 with JetStream at {}?)",
                args.nats_url
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("  fleet simulator  {fleet}/sim/summary");
    println!("  CSSM simulator   {cssm}/sim/stats");
    println!("  Tally API        {base}/api/v1   (Swagger UI: {base}/docs/)");

    // 1. Inventory: the fleet's own device list, imported in one all-or-nothing request.
    let devices: Vec<Value> = http
        .get(format!("{fleet}/sim/devices"))
        .send()
        .await?
        .json()
        .await?;
    let rows: Vec<Value> = devices
        .into_iter()
        .map(|mut d| {
            if let Some(o) = d.as_object_mut() {
                for k in tally_sim::SIM_ONLY_FIELDS {
                    o.remove(k);
                }
            }
            d
        })
        .collect();
    let imported = api
        .call(
            reqwest::Method::POST,
            "/devices/import",
            Some(Value::Array(rows)),
        )
        .await?;
    println!("1. inventory import: {imported}");
    loop {
        let s = api
            .call(reqwest::Method::GET, "/collector/status", None)
            .await?;
        if s["devices_known"].as_u64() == Some(n as u64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 2. A license cycle.
    let t_cycle = Instant::now();
    let started = api.call(reqwest::Method::POST, "/cycles", None).await?;
    let id = started["id"].as_str().unwrap_or_default().to_owned();
    println!("2. cycle {id} started");
    let mut exported = false;
    let cycle = loop {
        let c = api
            .call(reqwest::Method::GET, &format!("/cycles/{id}"), None)
            .await?;
        println!(
            "   collected {}/{} devices, reports stored {}, uploaded {}, ACKs installed {}/{}",
            c["collection"]["devices_ok"],
            c["collection"]["devices"],
            c["collection"]["reports_stored"],
            c["upload"]["reports_uploaded"],
            c["ack"]["devices_imported"],
            c["ack"]["devices_expected"]
        );
        if c["state"] != "running" {
            break c;
        }
        let collected = c["collection"]["started"] == true
            && c["collection"]["devices_ok"].as_i64().unwrap_or(0)
                + c["collection"]["devices_failed"].as_i64().unwrap_or(0)
                >= c["collection"]["devices"].as_i64().unwrap_or(i64::MAX);
        if args.mode == tally_cssm_uplink::Mode::Offline && collected && !exported {
            offline_exchange(&api, &http, &cssm).await?;
            exported = true;
        }
        if t_cycle.elapsed() > Duration::from_secs(900) {
            bail!("the cycle did not finish within 15 minutes");
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    };
    let cycle_secs = t_cycle.elapsed().as_secs_f64();

    // 3. Proof from the devices themselves.
    let summary: Value = http
        .get(format!("{fleet}/sim/summary"))
        .send()
        .await?
        .json()
        .await?;
    let stats: Value = http
        .get(format!("{cssm}/sim/stats"))
        .send()
        .await?
        .json()
        .await?;
    println!(
        "3. cycle {} in {cycle_secs:.1} s: {}",
        cycle["state"],
        serde_json::to_string_pretty(&json!({
            "collection": cycle["collection"], "upload": cycle["upload"], "ack": cycle["ack"]
        }))?
    );
    println!(
        "   devices holding an ACK signed by the simulated CSSM (read back from the devices): {}/{n}",
        summary["acked_devices"]
    );
    println!(
        "   CSSM: {} reports accepted, {} duplicates, {} signature failures",
        stats["reports_accepted"], stats["duplicates"], stats["signature_failures"]
    );
    let ok = cycle["state"] == "complete"
        && summary["acked_devices"].as_u64() == Some(n as u64)
        && stats["duplicates"].as_u64() == Some(0)
        && stats["signature_failures"].as_u64() == Some(0);
    println!("   total {:.1} s", t0.elapsed().as_secs_f64());
    if !ok {
        bail!("the demo cycle did not end with every device holding a valid ACK");
    }
    println!("OK: every device holds a CSSM-signed ACK; nothing was uploaded twice.");
    let Some(server) = server else {
        return Ok(());
    };
    if args.exit {
        return Ok(());
    }
    println!(
        "\nTally keeps running. Try:\n  curl -H 'Authorization: Bearer {token}' {base}/api/v1/cycles\n  open {base}/docs/\nCtrl-C stops it."
    );
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        r = server => match r { Ok(r) => r, Err(e) => bail!("tally stopped: {e}") },
    }
}

type Started = (
    String,
    String,
    String,
    String,
    tokio::task::JoinHandle<anyhow::Result<()>>,
);

/// Simulators and every Tally service in this process, on a fresh demo database.
async fn start_in_process(args: &DemoArgs) -> anyhow::Result<Started> {
    let n = args.devices;
    let db = recreate_db(&args.admin_db, &args.database).await?;
    let fleet_cfg = tally_sim::FleetConfig {
        devices: n,
        bind: args.fleet_listen,
        ..Default::default()
    };
    // CSSM holds the licenses this very fleet uses, so Tally's view and CSSM's agree.
    let pools = tally_sim::fleet_pools(&fleet_cfg, &tally_domain::rules::Rules::defaults(), 20);
    let (fleet_addr, _fleet, _) = tally_sim::start_fleet(fleet_cfg)
        .await
        .with_context(|| format!("starting the fleet simulator on {}", args.fleet_listen))?;
    let cssm_cfg = tally_sim::CssmConfig {
        bind: args.cssm_listen,
        processing_delay: Duration::from_millis(1000),
        pools,
        ..Default::default()
    };
    let (client_id, client_secret) = (cssm_cfg.client_id.clone(), cssm_cfg.client_secret.clone());
    let (cssm_addr, _cssm, _) = tally_sim::start_cssm(cssm_cfg)
        .await
        .with_context(|| format!("starting the CSSM simulator on {}", args.cssm_listen))?;
    let token = random_hex(20);
    let serve_args = ServeArgs {
        target: vec![Target::All],
        listen: args.listen,
        database_url: db,
        db_pool: 16,
        migrate: true,
        nats_url: args.nats_url.clone(),
        // A fresh namespace: the demo database is new, so must the event stream be.
        nats_namespace: format!("demo{}", random_hex(4)),
        api_tokens: format!("admin:{token}"),
        secret_key: random_hex(32),
        collect_concurrency: 256,
        collect_workers: 2,
        collect_slice: 512,
        device_timeout_secs: 10,
        device_retries: 2,
        uplink_mode: args.mode,
        cssm_api_base: format!("http://{cssm_addr}/services/api/smart-accounts-and-licensing/"),
        cssm_token_url: format!("http://{cssm_addr}/oauth2/v1/token"),
        cssm_client_id: client_id,
        cssm_client_secret: client_secret,
        batch_max_reports: 5000,
        poll_initial_ms: 1000,
        cycle_cron: None,
        tier_concurrency: 64,
        alert_interval_secs: 300,
        clock_offset_secs: 0,
        pool_sync_interval_secs: 3600,
    };
    let server = tokio::spawn(crate::serve::serve(serve_args));
    Ok((
        format!("http://{fleet_addr}"),
        format!("http://{cssm_addr}"),
        format!("http://{}", args.listen),
        token,
        server,
    ))
}

/// The air-gapped path: export the usage bundle, let the simulated CSSM answer it as the CSSM
/// portal would, and upload the ACK bundle.
async fn offline_exchange(api: &Api, http: &reqwest::Client, cssm: &str) -> anyhow::Result<()> {
    // Wait until every collected report has reached the uplink.
    loop {
        let s = api
            .call(reqwest::Method::GET, "/uplink/status", None)
            .await?;
        let c = api
            .call(reqwest::Method::GET, "/collector/status", None)
            .await?;
        if s["reports"]["pending"].as_i64() == c["reports_stored"].as_i64() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let bundle = http
        .post(format!("{}/uplink/offline/export", api.base))
        .bearer_auth(&api.token)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    println!("   exported usage bundle: {} bytes", bundle.len());
    let acks = http
        .post(format!("{cssm}/sim/offline/usage"))
        .header("content-type", "application/gzip")
        .body(bundle)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let r = http
        .post(format!("{}/uplink/offline/acks", api.base))
        .bearer_auth(&api.token)
        .header("content-type", "application/gzip")
        .body(acks)
        .send()
        .await?;
    let status = r.status();
    let text = r.text().await?;
    if !status.is_success() {
        bail!("ACK bundle import: HTTP {status}: {text}");
    }
    println!("   imported ACK bundle: {text}");
    Ok(())
}
