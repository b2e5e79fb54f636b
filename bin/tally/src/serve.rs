//! `tally serve`: assembles the chosen services into one process: their HTTP routes under
//! `/api/v1` (bearer-token auth), their consumers, workers and outbox relays.

use actix_web::{HttpResponse, HttpServer, middleware, web};
use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tally_bus::Bus;
use tally_catalyst_api::SecuritySchemes as CatalystAuth;
use tally_platform::{ApiTokens, Problem, SecretBox};
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

pub const DEFAULT_DB: &str = "postgres://postgres@127.0.0.1:5432/tally";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    All,
    Inventory,
    RumAggregator,
    CssmUplink,
    TierAssignment,
    RenewalScheduler,
    /// The Catalyst Center-compatible API (`/dna/...`).
    CatalystApi,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Services to run in this process.
    #[arg(
        long,
        env = "TALLY_TARGET",
        value_enum,
        value_delimiter = ',',
        default_value = "all"
    )]
    pub target: Vec<Target>,
    #[arg(long, env = "TALLY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    #[arg(long, env = "TALLY_DATABASE_URL", default_value = DEFAULT_DB)]
    pub database_url: String,
    #[arg(long, env = "TALLY_DB_POOL", default_value_t = 16)]
    pub db_pool: usize,
    /// Apply pending migrations before starting.
    #[arg(long, env = "TALLY_MIGRATE")]
    pub migrate: bool,
    #[arg(long, env = "TALLY_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Prefix of every subject and stream, so installations can share a NATS server.
    #[arg(long, env = "TALLY_NATS_NAMESPACE", default_value = "tally")]
    pub nats_namespace: String,
    /// `role:token` pairs, comma separated (roles: admin, operator, viewer).
    #[arg(long, env = "TALLY_API_TOKENS", hide_env_values = true)]
    pub api_tokens: String,
    /// Key that seals device credentials (every replica needs the same one).
    #[arg(long, env = "TALLY_SECRET_KEY", hide_env_values = true)]
    pub secret_key: String,
    #[arg(long, env = "TALLY_COLLECT_CONCURRENCY", default_value_t = 256)]
    pub collect_concurrency: usize,
    #[arg(long, env = "TALLY_COLLECT_WORKERS", default_value_t = 2)]
    pub collect_workers: usize,
    #[arg(long, env = "TALLY_COLLECT_SLICE", default_value_t = 512)]
    pub collect_slice: i64,
    #[arg(long, env = "TALLY_DEVICE_TIMEOUT_SECS", default_value_t = 10)]
    pub device_timeout_secs: u64,
    #[arg(long, env = "TALLY_DEVICE_RETRIES", default_value_t = 2)]
    pub device_retries: u32,
    /// `online` (CSSM API) or `offline` (bundle files through the API).
    #[arg(long, env = "TALLY_UPLINK_MODE", default_value = "online")]
    pub uplink_mode: tally_cssm_uplink::Mode,
    #[arg(
        long,
        env = "TALLY_CSSM_API_BASE",
        default_value = "https://swapi.cisco.com/services/api/smart-accounts-and-licensing/"
    )]
    pub cssm_api_base: String,
    #[arg(
        long,
        env = "TALLY_CSSM_TOKEN_URL",
        default_value = "https://id.cisco.com/oauth2/default/v1/token"
    )]
    pub cssm_token_url: String,
    #[arg(long, env = "TALLY_CSSM_CLIENT_ID", default_value = "")]
    pub cssm_client_id: String,
    #[arg(
        long,
        env = "TALLY_CSSM_CLIENT_SECRET",
        default_value = "",
        hide_env_values = true
    )]
    pub cssm_client_secret: String,
    /// `X-CSW-REQUESTING-SYSTEM` as a JSON UDI object, e.g.
    /// `{"udi_pid":"TALLY","udi_serial_number":"LAB01"}`; unset: PID `TALLY` and a serial derived
    /// from the CSSM client id (stable across restarts and replicas).
    #[arg(long, env = "TALLY_CSSM_REQUESTING_SYSTEM")]
    pub cssm_requesting_system: Option<String>,
    #[arg(long, env = "TALLY_BATCH_MAX_REPORTS", default_value_t = 5000)]
    pub batch_max_reports: usize,
    #[arg(long, env = "TALLY_POLL_INITIAL_MS", default_value_t = 2000)]
    pub poll_initial_ms: u64,
    /// How often the account directory (CSSM's ids for smart and virtual accounts) is refreshed
    /// from `v2/accounts/search`; 0: only on a miss and on request.
    #[arg(long, env = "TALLY_ACCOUNTS_REFRESH_SECS", default_value_t = 3600)]
    pub accounts_refresh_secs: u64,
    /// Cron expression (UTC) for scheduled cycles, e.g. `0 3 * * 0`; none when unset.
    #[arg(long, env = "TALLY_CYCLE_CRON")]
    pub cycle_cron: Option<String>,
    /// Seconds between alert evaluations.
    #[arg(long, env = "TALLY_ALERT_INTERVAL_SECS", default_value_t = 300)]
    pub alert_interval_secs: u64,
    /// Seconds added to the clock when evaluating deadlines and alerts (drills and tests only).
    #[arg(
        long,
        env = "TALLY_CLOCK_OFFSET_SECS",
        default_value_t = 0,
        allow_hyphen_values = true
    )]
    pub clock_offset_secs: i64,
    /// Devices configured at once by a tier job worker.
    #[arg(long, env = "TALLY_TIER_CONCURRENCY", default_value_t = 64)]
    pub tier_concurrency: usize,
    /// Seconds between entitlement pool syncs from CSSM (online mode).
    #[arg(long, env = "TALLY_POOL_SYNC_INTERVAL_SECS", default_value_t = 3600)]
    pub pool_sync_interval_secs: u64,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Tally API", description = "License controller for Cisco fleets under Smart Licensing Using Policy. Every route but /healthz, /readyz and /metrics needs `Authorization: Bearer <token>`; errors are application/problem+json (RFC 9457)."),
    modifiers(&BearerAuth, &CatalystAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;
impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(Clone, Default)]
struct Services {
    inventory: Option<web::Data<tally_inventory::Inventory>>,
    rum: Option<web::Data<tally_rum_aggregator::Aggregator>>,
    uplink: Option<web::Data<tally_cssm_uplink::Uplink>>,
    scheduler: Option<web::Data<tally_renewal_scheduler::Scheduler>>,
    tiers: Option<web::Data<tally_tier_assignment::Tiers>>,
    catalyst: Option<web::Data<tally_catalyst_api::Catalyst>>,
}

struct Ready {
    pool: tally_store::Pool,
    bus: Bus,
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn readyz(r: web::Data<Ready>) -> Result<HttpResponse, Problem> {
    if !tally_store::ping(&r.pool).await {
        return Err(Problem::unavailable("database not reachable"));
    }
    if !r.bus.ready().await {
        return Err(Problem::unavailable("NATS JetStream not reachable"));
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ready"})))
}

async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(tally_platform::metrics::render())
}

/// Builds the whole OpenAPI document for every service (used by `tally openapi` and tests).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, api) = tally_platform::api_app(ApiDoc::openapi(), web::Data::new(ApiTokens::default()))
        .service(
            tally_platform::api_scope()
                .configure(tally_inventory::routes)
                .configure(tally_rum_aggregator::routes)
                .configure(tally_cssm_uplink::routes)
                .configure(tally_renewal_scheduler::routes)
                .configure(tally_tier_assignment::routes),
        )
        .configure(tally_catalyst_api::routes)
        .split_for_parts();
    api
}

fn has(targets: &[Target], t: Target) -> bool {
    targets.contains(&Target::All) || targets.contains(&t)
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let tokens = ApiTokens::parse(&args.api_tokens).map_err(anyhow::Error::msg)?;
    if tokens.is_empty() {
        bail!("no API tokens configured: set TALLY_API_TOKENS=admin:<token>[,operator:<token>...]");
    }
    if args.secret_key.len() < 16 {
        bail!("TALLY_SECRET_KEY must be at least 16 characters (it seals device credentials)");
    }
    if let Some(expr) = &args.cycle_cron {
        tally_renewal_scheduler::parse_cron(expr).map_err(anyhow::Error::msg)?;
    }
    if args.migrate {
        tally_store::migrate(&args.database_url)
            .await
            .context("applying migrations")?;
    }
    let pool = tally_store::pool(&args.database_url, args.db_pool)?;
    let bus = Bus::connect(&args.nats_url, &args.nats_namespace).await?;
    bus.ensure_stream().await.context(
        "creating the JetStream stream (NATS >= 2.10 with JetStream enabled is required)",
    )?;
    let secrets = SecretBox::from_secret(&args.secret_key);
    let (svc, mut tasks) = start_services(&args, &pool, &bus, &secrets)?;

    let tokens = web::Data::new(tokens);
    let catalyst_key = web::Data::new(tally_platform::catalyst_token::TokenKey::from_secret(
        &args.secret_key,
    ));
    let ready = web::Data::new(Ready {
        pool: pool.clone(),
        bus: bus.clone(),
    });
    let server = HttpServer::new(move || {
        let s = svc.clone();
        let scope = tally_platform::api_scope().configure(|cfg| {
            if s.inventory.is_some() {
                tally_inventory::routes(cfg);
            }
            if s.rum.is_some() {
                tally_rum_aggregator::routes(cfg);
            }
            if s.uplink.is_some() {
                tally_cssm_uplink::routes(cfg);
            }
            if s.scheduler.is_some() {
                tally_renewal_scheduler::routes(cfg);
            }
            if s.tiers.is_some() {
                tally_tier_assignment::routes(cfg);
            }
        });
        let mut app = tally_platform::api_app(ApiDoc::openapi(), tokens.clone())
            .service(scope)
            .app_data(catalyst_key.clone())
            .app_data(ready.clone());
        if let Some(d) = &s.inventory {
            app = app.app_data(d.clone());
        }
        if let Some(d) = &s.rum {
            app = app.app_data(d.clone());
        }
        if let Some(d) = &s.uplink {
            app = app.app_data(d.clone());
        }
        if let Some(d) = &s.scheduler {
            app = app.app_data(d.clone());
        }
        if let Some(d) = &s.tiers {
            app = app.app_data(d.clone());
        }
        if let Some(d) = &s.catalyst {
            app = app.app_data(d.clone());
        }
        let (app, api) = app
            .configure(|cfg| {
                // Catalyst Center's paths at the root, with its own token auth, so its SDKs
                // work unchanged.
                if s.catalyst.is_some() {
                    tally_catalyst_api::routes(cfg);
                }
            })
            .split_for_parts();
        app.wrap(middleware::from_fn(count_requests))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
            .service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", api))
            .default_service(web::to(|| async {
                Err::<HttpResponse, _>(Problem::not_found("route", "for this method and path"))
            }))
    })
    .bind(args.listen)
    .with_context(|| format!("binding {}", args.listen))?
    .shutdown_timeout(10)
    .run();
    tracing::info!(listen = %args.listen, targets = ?args.target, "tally serving");
    let handle = server.handle();
    tokio::select! {
        r = server => { r?; }
        Some(r) = tasks.join_next() => {
            handle.stop(true).await;
            match r {
                Ok(Ok(())) => bail!("a background service stopped"),
                Ok(Err(e)) => return Err(e.context("a background service failed")),
                Err(e) => bail!("a background service panicked: {e}"),
            }
        }
    }
    tasks.shutdown().await;
    tracing::info!("tally stopped");
    Ok(())
}

/// Each target's service value (for the HTTP app) and its background work (relays, consumers,
/// workers), started on a join set: the server stops when any of them ends.
fn start_services(
    args: &ServeArgs,
    pool: &tally_store::Pool,
    bus: &Bus,
    secrets: &SecretBox,
) -> anyhow::Result<(Services, tokio::task::JoinSet<anyhow::Result<()>>)> {
    let t = &args.target;
    let mut svc = Services::default();
    let mut tasks = tokio::task::JoinSet::new();

    if has(t, Target::Inventory) {
        let inv = tally_inventory::Inventory {
            pool: pool.clone(),
            secrets: secrets.clone(),
        };
        svc.inventory = Some(web::Data::new(inv.clone()));
        // Its outbox relay and the consumer of tier-assignment's license changes.
        let b = bus.clone();
        tasks.spawn(async move {
            tally_inventory::run(inv, b)
                .await
                .map_err(anyhow::Error::from)
        });
    }
    if has(t, Target::RumAggregator) {
        let agg = tally_rum_aggregator::Aggregator::new(
            pool.clone(),
            bus.clone(),
            secrets.clone(),
            tally_rum_aggregator::Config {
                concurrency: args.collect_concurrency,
                workers: args.collect_workers,
                slice: args.collect_slice,
                device_timeout: Duration::from_secs(args.device_timeout_secs),
                device_retries: args.device_retries,
            },
        )?;
        svc.rum = Some(web::Data::new(agg.clone()));
        tasks.spawn(async move {
            tally_rum_aggregator::run(agg)
                .await
                .map_err(anyhow::Error::from)
        });
    }
    if has(t, Target::CssmUplink) {
        let cssm = cssm_client(args)?;
        let up = tally_cssm_uplink::Uplink {
            pool: pool.clone(),
            bus: bus.clone(),
            cssm,
            cfg: Arc::new(tally_cssm_uplink::Config {
                mode: args.uplink_mode,
                batch_max_reports: args.batch_max_reports,
                poll_initial: Duration::from_millis(args.poll_initial_ms),
                accounts_refresh: Duration::from_secs(args.accounts_refresh_secs),
                ..Default::default()
            }),
        };
        svc.uplink = Some(web::Data::new(up.clone()));
        tasks.spawn(async move {
            tally_cssm_uplink::run(up)
                .await
                .map_err(anyhow::Error::from)
        });
    }
    if has(t, Target::RenewalScheduler) {
        let s = tally_renewal_scheduler::Scheduler {
            pool: pool.clone(),
            bus: bus.clone(),
            cfg: Arc::new(tally_renewal_scheduler::Config {
                cron: args.cycle_cron.clone(),
                alert_interval: Duration::from_secs(args.alert_interval_secs.max(1)),
                clock_offset: chrono::TimeDelta::try_seconds(args.clock_offset_secs)
                    .unwrap_or_default(),
            }),
            webhooks: Some(tally_webhook::Webhooks::new(
                tally_webhook::Schema::new("sched")?,
                secrets.clone(),
            )),
        };
        svc.scheduler = Some(web::Data::new(s.clone()));
        tasks.spawn(async move {
            tally_renewal_scheduler::run(s)
                .await
                .map_err(anyhow::Error::from)
        });
    }
    if has(t, Target::TierAssignment) {
        let tiers = tally_tier_assignment::Tiers::new(
            pool.clone(),
            bus.clone(),
            secrets.clone(),
            cssm_client(args)?,
            tally_tier_assignment::Config {
                concurrency: args.tier_concurrency,
                device_timeout: Duration::from_secs(args.device_timeout_secs),
                device_retries: args.device_retries,
                pool_sync_interval: Duration::from_secs(args.pool_sync_interval_secs.max(60)),
                ..Default::default()
            },
        )?;
        svc.tiers = Some(web::Data::new(tiers.clone()));
        tasks.spawn(async move {
            tally_tier_assignment::run(tiers)
                .await
                .map_err(anyhow::Error::from)
        });
    }

    if has(t, Target::CatalystApi) {
        let cat = tally_catalyst_api::Catalyst {
            pool: pool.clone(),
            bus: bus.clone(),
            clock_offset: chrono::TimeDelta::try_seconds(args.clock_offset_secs)
                .unwrap_or_default(),
        };
        svc.catalyst = Some(web::Data::new(cat.clone()));
        // The consumer of tier-assignment's answers to its transfers.
        tasks.spawn(async move {
            tally_catalyst_api::run(cat)
                .await
                .map_err(anyhow::Error::from)
        });
    }
    Ok((svc, tasks))
}

/// CSSM's API client, or `None` in offline mode (air-gapped sites exchange files instead).
fn cssm_client(args: &ServeArgs) -> anyhow::Result<Option<Arc<tally_cssm::CssmClient>>> {
    match args.uplink_mode {
        tally_cssm_uplink::Mode::Offline => Ok(None),
        tally_cssm_uplink::Mode::Online => {
            if args.cssm_client_id.is_empty() {
                bail!(
                    "online mode needs TALLY_CSSM_CLIENT_ID and TALLY_CSSM_CLIENT_SECRET (or TALLY_UPLINK_MODE=offline)"
                );
            }
            let requesting_system = match &args.cssm_requesting_system {
                Some(text) => tally_cssm::RequestingSystem::parse(text)
                    .map_err(|e| anyhow::anyhow!("TALLY_CSSM_REQUESTING_SYSTEM: {e}"))?,
                None => tally_cssm::RequestingSystem::for_installation(&args.cssm_client_id),
            };
            Ok(Some(Arc::new(tally_cssm::CssmClient::new(
                tally_cssm::CssmConfig {
                    api_base: args.cssm_api_base.clone(),
                    token_url: args.cssm_token_url.clone(),
                    client_id: args.cssm_client_id.clone(),
                    client_secret: args.cssm_client_secret.clone(),
                    requesting_system,
                    timeout: Duration::from_secs(120),
                },
            )?)))
        }
    }
}

async fn count_requests(
    req: actix_web::dev::ServiceRequest,
    next: middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let res = next.call(req).await;
    match &res {
        Ok(r) => tally_platform::metrics::http(r.status().as_u16()),
        Err(e) => tally_platform::metrics::http(e.as_response_error().status_code().as_u16()),
    }
    res
}
