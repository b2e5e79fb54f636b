//! `tally`: one binary for every Tally service (monolith or one target per pod), migrations, the
//! simulators and the demo.

mod demo;
mod serve;
mod tiers;
mod uplink;

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "License controller for Cisco fleets under Smart Licensing Using Policy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run services: `--target all` (one process) or a list such as `inventory,rum-aggregator`.
    Serve(Box<serve::ServeArgs>),
    /// Apply database migrations and exit.
    Migrate {
        #[arg(long, env = "TALLY_DATABASE_URL", default_value = serve::DEFAULT_DB)]
        database_url: String,
    },
    /// Simulators that speak the real formats.
    #[command(subcommand)]
    Sim(SimCommand),
    /// Print the OpenAPI 3.1 document of the REST API.
    Openapi,
    /// Bring up Tally with a simulated fleet and CSSM on this machine and run one license cycle.
    Demo(demo::DemoArgs),
    /// Bulk DNA tier and network license assignment through the REST API (needs a token).
    Tiers(tiers::TiersArgs),
    /// The uplink to CSSM through the REST API: the account directory (needs a token).
    Uplink(uplink::UplinkArgs),
}

#[derive(Subcommand)]
enum SimCommand {
    /// N simulated IOS-XE devices, each at http://<listen>/d/<index>/smartlic-service.
    Fleet {
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Secret the devices' signing keys derive from (the CSSM simulator must share it).
        #[arg(
            long,
            env = "TALLY_SIM_DEVICE_SECRET",
            default_value = "tally-sim-devices"
        )]
        device_secret: String,
        /// Secret CSSM's ACK signing key derives from (the CSSM simulator must share it).
        #[arg(long, env = "TALLY_SIM_CSSM_SECRET", default_value = "tally-sim-cssm")]
        cssm_secret: String,
    },
    /// A simulated CSSM: OAuth2, reportusage, poll, licenses, offline bundles.
    Cssm {
        #[arg(long, default_value = "127.0.0.1:9200")]
        listen: SocketAddr,
        /// How long CSSM "processes" an upload before poll answers COMPLETE.
        #[arg(long, default_value_t = 2000)]
        processing_delay_ms: u64,
        #[arg(
            long,
            env = "TALLY_SIM_DEVICE_SECRET",
            default_value = "tally-sim-devices"
        )]
        device_secret: String,
        #[arg(long, env = "TALLY_SIM_CSSM_SECRET", default_value = "tally-sim-cssm")]
        cssm_secret: String,
        /// License pools that match `tally sim fleet --devices N` (with the same seed), so Tally's
        /// view and CSSM's agree; 0 for the fixed sample pools.
        #[arg(long, default_value_t = 1000)]
        fleet_devices: usize,
        #[arg(long, default_value_t = 1)]
        fleet_seed: u64,
        /// Pool quantity above what the fleet uses, in percent (plus 5 licenses).
        #[arg(long, default_value_t = 20)]
        pool_headroom_pct: u32,
        /// Only these of the default virtual accounts (Campus, Branch, Voice) exist in this
        /// CSSM: uploads for the others are refused, as a real CSSM refuses an unknown VA.
        #[arg(long, value_delimiter = ',')]
        only_virtual_accounts: Vec<String>,
        /// Send this policy with every ACK issued (`custom_30_60_60`, `enforced` or
        /// `cisco_default`), as a real CSSM can send `<smartLicensePolicy>` with an ACK; none
        /// by default. `PUT /sim/ack-policy` changes it while running.
        #[arg(long, value_parser = parse_sim_policy)]
        ack_policy: Option<tally_sim::yang_state::SimPolicy>,
    },
}

/// A simulated device policy by its name (`custom_30_60_60`, `enforced`, `cisco_default`).
fn parse_sim_policy(s: &str) -> Result<tally_sim::yang_state::SimPolicy, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| format!("unknown policy {s:?}: custom_30_60_60, enforced or cisco_default"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo and the tiers CLI talk to a person: only warnings interrupt their output.
    let quiet = matches!(
        cli.command,
        Command::Demo(_) | Command::Tiers(_) | Command::Uplink(_)
    );
    tally_platform::init_logging(if quiet { "warn" } else { "info" });
    tally_platform::init_crypto();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::serve(*args).await,
            Command::Migrate { database_url } => {
                let applied = tally_store::migrate(&database_url).await?;
                if applied.is_empty() {
                    println!("database is up to date");
                }
                for m in applied {
                    println!("applied {m}");
                }
                Ok(())
            }
            Command::Sim(SimCommand::Fleet {
                devices,
                listen,
                seed,
                device_secret,
                cssm_secret,
            }) => {
                let cfg = tally_sim::FleetConfig {
                    devices,
                    bind: listen,
                    seed,
                    device_secret: device_secret.into_bytes(),
                    cssm_secret: cssm_secret.into_bytes(),
                    ..Default::default()
                };
                tracing::info!(devices, %listen, "device fleet simulator starting");
                Ok(tally_sim::run_fleet(cfg).await?)
            }
            Command::Sim(SimCommand::Cssm {
                listen,
                processing_delay_ms,
                device_secret,
                cssm_secret,
                fleet_devices,
                fleet_seed,
                pool_headroom_pct,
                only_virtual_accounts,
                ack_policy,
            }) => {
                let mut cfg = tally_sim::CssmConfig {
                    bind: listen,
                    ack_policy,
                    processing_delay: Duration::from_millis(processing_delay_ms),
                    device_secret: device_secret.into_bytes(),
                    cssm_secret: cssm_secret.into_bytes(),
                    ..Default::default()
                };
                if fleet_devices > 0 {
                    let fleet = tally_sim::FleetConfig {
                        devices: fleet_devices,
                        seed: fleet_seed,
                        ..Default::default()
                    };
                    cfg.pools = tally_sim::fleet_pools(
                        &fleet,
                        &tally_domain::rules::Rules::defaults(),
                        pool_headroom_pct,
                    );
                }
                if !only_virtual_accounts.is_empty() {
                    cfg.virtual_accounts
                        .retain(|v| only_virtual_accounts.contains(&v.name));
                    cfg.pools
                        .retain(|p| only_virtual_accounts.contains(&p.virtual_account));
                }
                tracing::info!(%listen, "CSSM simulator starting");
                Ok(tally_sim::run_cssm(cfg).await?)
            }
            Command::Demo(args) => demo::run(args).await,
            Command::Tiers(args) => tiers::run(args).await,
            Command::Uplink(args) => uplink::run(args).await,
            Command::Openapi => {
                println!("{}", serve::openapi().to_pretty_json()?);
                Ok(())
            }
        }
    })
}
