//! `tally demo`: everything on one machine. Starts a simulated fleet and a simulated CSSM, runs
//! all services in this process against a fresh demo database, imports the fleet into the
//! inventory through the API, runs one license cycle, and checks on the devices themselves that
//! each holds an ACK the simulated CSSM signed.

use crate::serve::{ServeArgs, Target};
use anyhow::{Context, anyhow, bail};
use clap::Args;
use serde_json::{Value, json};
use std::{net::SocketAddr, time::Duration, time::Instant};
use tally_client::Client;

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

/// `"<path>: <error>"`, as the demo has always named a failed call.
fn at(path: &'static str) -> impl FnOnce(tally_client::Error) -> anyhow::Error {
    move |e| anyhow!("{path}: {e}")
}

/// What the demo drives: the simulators' URLs, Tally's API, and the in-process server if it
/// started one.
struct Stack {
    fleet: String,
    cssm: String,
    api: Client,
    token: String,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let n = args.devices;
    println!("Tally demo: {n} simulated devices, a simulated CSSM, all services in one process");
    let stack = start(&args).await?;
    wait_ready(&stack, &args.nats_url).await?;
    let base = stack.api.base();
    println!("  fleet simulator  {}/sim/summary", stack.fleet);
    println!("  CSSM simulator   {}/sim/stats", stack.cssm);
    println!("  Tally API        {base}/api/v1   (Swagger UI: {base}/docs/)");
    import_fleet(&stack, n).await?;
    let t_cycle = Instant::now();
    let cycle = license_cycle(&stack, args.mode).await?;
    let cycle_secs = t_cycle.elapsed().as_secs_f64();
    prove(&stack, n, &cycle, cycle_secs, t0).await?;
    keep_serving(stack, args.exit).await
}

/// The Tally given with `--tally-url` and its simulators, or all of them in this process.
async fn start(args: &DemoArgs) -> anyhow::Result<Stack> {
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
            let (fleet, cssm, base, token, server) = start_in_process(args).await?;
            (fleet, cssm, base, token, Some(server))
        }
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()?;
    Ok(Stack {
        fleet,
        cssm,
        api: Client::with_http(http, &base, token.clone()),
        token,
        server,
    })
}

async fn wait_ready(stack: &Stack, nats_url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(server) = &stack.server
            && server.is_finished()
        {
            bail!("tally stopped during start-up (see the log above)");
        }
        if stack.api.ready().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "tally was not ready within 60 s (is NATS >= 2.10 with JetStream at {nats_url}?)"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Step 1, inventory: the fleet's own device list, imported in one all-or-nothing request.
async fn import_fleet(stack: &Stack, n: usize) -> anyhow::Result<()> {
    let api = &stack.api;
    let devices: Vec<Value> = api
        .http()
        .get(format!("{}/sim/devices", stack.fleet))
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
    let imported: Value = api
        .import_devices(&rows)
        .await
        .map_err(at("/devices/import"))?;
    println!("1. inventory import: {imported}");
    loop {
        let s: Value = api
            .collector_status()
            .await
            .map_err(at("/collector/status"))?;
        if s["devices_known"].as_u64() == Some(n as u64) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Step 2, a license cycle, followed until it ends; offline, the bundles are carried once
/// every device is collected.
async fn license_cycle(stack: &Stack, mode: tally_cssm_uplink::Mode) -> anyhow::Result<Value> {
    let api = &stack.api;
    let t_cycle = Instant::now();
    let started: Value = api.start_cycle().await.map_err(at("/cycles"))?.body;
    let id = started["id"].as_str().unwrap_or_default().to_owned();
    println!("2. cycle {id} started");
    let mut exported = false;
    loop {
        let c: Value = api
            .cycle(&id)
            .await
            .map_err(|e| anyhow!("/cycles/{id}: {e}"))?;
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
            return Ok(c);
        }
        let collected = c["collection"]["started"] == true
            && c["collection"]["devices_ok"].as_i64().unwrap_or(0)
                + c["collection"]["devices_failed"].as_i64().unwrap_or(0)
                >= c["collection"]["devices"].as_i64().unwrap_or(i64::MAX);
        if mode == tally_cssm_uplink::Mode::Offline && collected && !exported {
            offline_exchange(api, &stack.cssm).await?;
            exported = true;
        }
        if t_cycle.elapsed() > Duration::from_secs(900) {
            bail!("the cycle did not finish within 15 minutes");
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
}

/// Step 3, proof from the devices themselves.
async fn prove(
    stack: &Stack,
    n: usize,
    cycle: &Value,
    cycle_secs: f64,
    t0: Instant,
) -> anyhow::Result<()> {
    let http = stack.api.http();
    let summary: Value = http
        .get(format!("{}/sim/summary", stack.fleet))
        .send()
        .await?
        .json()
        .await?;
    let stats: Value = http
        .get(format!("{}/sim/stats", stack.cssm))
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
    Ok(())
}

/// An in-process Tally keeps serving until Ctrl-C, unless `--exit`.
async fn keep_serving(stack: Stack, exit: bool) -> anyhow::Result<()> {
    let Some(server) = stack.server else {
        return Ok(());
    };
    if exit {
        return Ok(());
    }
    let (base, token) = (stack.api.base(), &stack.token);
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
        cssm_requesting_system: None,
        batch_max_reports: 5000,
        poll_initial_ms: 1000,
        accounts_refresh_secs: 3600,
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
async fn offline_exchange(api: &Client, cssm: &str) -> anyhow::Result<()> {
    // Wait until every collected report has reached the uplink.
    loop {
        let s: Value = api.uplink_status().await.map_err(at("/uplink/status"))?;
        let c: Value = api
            .collector_status()
            .await
            .map_err(at("/collector/status"))?;
        if s["reports"]["pending"].as_i64() == c["reports_stored"].as_i64() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let bundle = api
        .export_offline()
        .await
        .map_err(at("/uplink/offline/export"))?;
    println!("   exported usage bundle: {} bytes", bundle.len());
    let acks = api
        .http()
        .post(format!("{cssm}/sim/offline/usage"))
        .header("content-type", "application/gzip")
        .body(bundle)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let summary = api
        .import_offline_acks(acks.to_vec())
        .await
        .map_err(|e| anyhow!("ACK bundle import: {e}"))?;
    println!(
        "   imported ACK bundle: {}",
        String::from_utf8_lossy(&summary)
    );
    Ok(())
}
