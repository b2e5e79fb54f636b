//! `tally tiers ...`: bulk DNA tier and network license assignment through the REST API
//! (`/api/v1/tiers`), for operators and their scripts.
//!
//! Exit codes: 0 success; 2 the request was refused or invalid (HTTP 4xx, a plan that is not
//! executable, bad flags or files: nothing changed); 1 anything else (network, server, a job
//! that ended partial, failed, rolled back or cancelled).

use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tally_tier_assignment::api::{HistoryEntry, JobItem, LedgerDevice};
use tally_tier_assignment::jobs::{Job, is_finished};
use tally_tier_assignment::plan::{Levels, Mode, Plan, PlanRequest, Selector, Target};
use tally_tier_assignment::pools::{PoolView, SyncSummary};
use uuid::Uuid;

/// Server-side maximum page: the CLI lists everything unless told otherwise.
const ALL: i64 = 1_000_000;
/// Problem `errors` printed before "... and N more".
const MAX_ERRORS: usize = 50;

#[derive(Args)]
pub struct TiersArgs {
    /// Tally's base URL.
    #[arg(
        long,
        env = "TALLY_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// Bearer token (GET needs viewer, changes operator, rules admin).
    #[arg(long, env = "TALLY_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: TiersCommand,
}

#[derive(Subcommand)]
enum TiersCommand {
    /// Dry-run: what a job would change, the pool impact and every violation. Exits 2 when the
    /// plan is not executable.
    Plan(PlanCmd),
    /// Start a job (asks first unless --yes); --wait follows it to the end.
    Apply(ApplyCmd),
    /// Follow a job with a progress bar; exits 0 when it is done, 1 otherwise.
    Watch {
        job_id: Uuid,
        /// Print the final job as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Jobs, newest first.
    Jobs {
        /// applying, rolling_back, done, partial, failed, rolled_back or cancelled.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Per-device results of a job.
    Items {
        job_id: Uuid,
        /// pending, applied, confirmed, failed, rejected, cancelled, revert_pending, reverted,
        /// revert_failed.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, conflicts_with = "json")]
        csv: bool,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job: devices not yet configured are left alone; an all-or-nothing job also
    /// configures its devices back.
    Cancel { job_id: Uuid },
    /// Entitlement pools: purchased, held by Tally's ledger, left, and drift against CSSM.
    Pools {
        /// Only pools whose ledger and CSSM's in-use count disagree.
        #[arg(long)]
        drift: bool,
        #[arg(long, conflicts_with = "json")]
        csv: bool,
        #[arg(long)]
        json: bool,
    },
    /// Sync the pools from CSSM now (online installations).
    Sync {
        #[arg(long)]
        json: bool,
    },
    /// Replace a smart account's pools from a file (air-gapped installations): CSSM's licenses
    /// answer (`{"licenses": [...]}`) or its `licenses` array.
    ImportPools {
        /// JSON file, `-` for standard input.
        file: PathBuf,
        /// Smart account the pools belong to (else the file's `smart_account`).
        #[arg(long)]
        smart_account: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The license ledger: what each device holds and whether it waits for a reload.
    Devices(DevicesCmd),
    /// Tier changes, virtual account changes and ACKs per device, oldest first.
    History(HistoryCmd),
    /// The rules jobs are checked against.
    #[command(subcommand)]
    Rules(RulesCommand),
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Print the rules in force (JSON).
    Get,
    /// Replace the rules with a JSON file (admin); every problem is named, nothing stored unless
    /// all are valid.
    Put {
        /// JSON file, `-` for standard input.
        file: PathBuf,
    },
    /// Go back to the shipped default rules (admin).
    Reset,
}

#[derive(Args)]
struct SelectArgs {
    /// A device id (repeatable).
    #[arg(long = "device-id", value_name = "UUID")]
    device_ids: Vec<Uuid>,
    /// A CSV file with a `device_id` (or `id`) column, such as `tally tiers items --csv` and
    /// `tally tiers devices --csv` write; `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    devices_csv: Option<PathBuf>,
    /// Devices at this site.
    #[arg(long)]
    site: Option<String>,
    /// Devices in this inventory group.
    #[arg(long)]
    group: Option<String>,
    /// Exact model or a prefix ending in `*` (`C9300-*`; `*` selects every device).
    #[arg(long)]
    model: Option<String>,
    /// Exact hostname or a prefix ending in `*`.
    #[arg(long)]
    hostname: Option<String>,
    /// Devices whose DNA tier is this now (`none`: no add-on).
    #[arg(long, value_name = "TIER")]
    current_dna_tier: Option<String>,
    /// Devices whose network license is this now.
    #[arg(long, value_name = "LICENSE")]
    current_network_license: Option<String>,
    /// Devices in this virtual account now.
    #[arg(long, value_name = "VA")]
    current_virtual_account: Option<String>,
}

#[derive(Args)]
struct TargetArgs {
    /// network-essentials or network-advantage.
    #[arg(long, value_name = "LICENSE")]
    network_license: Option<String>,
    /// dna-essentials, dna-advantage, dna-premier, or `none` to remove the add-on.
    #[arg(long, value_name = "TIER")]
    dna_tier: Option<String>,
    /// Move the devices (and the licenses they hold) to this virtual account.
    #[arg(long, value_name = "VA")]
    virtual_account: Option<String>,
    /// Draw this DNA license (as CSSM names it) instead of the first that fits the model.
    #[arg(long, value_name = "NAME")]
    dna_license: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    /// Refused unless every selected device passes the rules and fits the pools; a device
    /// that fails to configure rolls the whole job back.
    AllOrNothing,
    /// Devices that pass go ahead; the others are reported.
    BestEffort,
}

#[derive(Args)]
struct RequestArgs {
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    target: TargetArgs,
    #[arg(long, value_enum, default_value = "all-or-nothing")]
    mode: ModeArg,
    /// How many violations to list.
    #[arg(long, default_value_t = 20, value_name = "N")]
    violations: usize,
}

#[derive(Args)]
struct PlanCmd {
    #[command(flatten)]
    req: RequestArgs,
    /// Print the plan as JSON.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Write the changes as CSV.
    #[arg(long)]
    csv: bool,
}

#[derive(Args)]
struct ApplyCmd {
    #[command(flatten)]
    req: RequestArgs,
    /// Makes a retry return the same job instead of starting another (default: a new UUID,
    /// printed so a retry can pass it).
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// Refuse the job unless it does exactly what the dry-run with this fingerprint showed.
    #[arg(long, value_name = "FINGERPRINT")]
    expect_fingerprint: Option<String>,
    /// Do not ask for confirmation.
    #[arg(long, short)]
    yes: bool,
    /// Follow the job until it ends (exit 1 unless it is done).
    #[arg(long)]
    wait: bool,
    /// Print the job (with --wait: the finished job) as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DevicesCmd {
    #[arg(long)]
    site: Option<String>,
    #[arg(long)]
    group: Option<String>,
    /// Exact model or a prefix ending in `*`.
    #[arg(long)]
    model: Option<String>,
    /// A DNA tier, or `none`.
    #[arg(long)]
    dna_tier: Option<String>,
    /// active, applying or pending_reload.
    #[arg(long)]
    state: Option<String>,
    #[arg(long, default_value_t = ALL)]
    limit: i64,
    #[arg(long, conflicts_with = "json")]
    csv: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct HistoryCmd {
    #[arg(long)]
    device_id: Option<Uuid>,
    /// tier, virtual_account or ack.
    #[arg(long)]
    kind: Option<String>,
    #[arg(long)]
    job_id: Option<Uuid>,
    /// RFC 3339 time, inclusive.
    #[arg(long)]
    since: Option<String>,
    /// RFC 3339 time, exclusive.
    #[arg(long)]
    until: Option<String>,
    /// Entries after this id (to page).
    #[arg(long)]
    after: Option<i64>,
    #[arg(long, default_value_t = ALL)]
    limit: i64,
    #[arg(long, conflicts_with = "json")]
    csv: bool,
    #[arg(long)]
    json: bool,
}

/// A failure and its exit code.
#[derive(Debug)]
struct Failure {
    code: i32,
    message: String,
}

fn invalid(message: impl Into<String>) -> Failure {
    Failure {
        code: 2,
        message: message.into(),
    }
}

fn failed(message: impl Into<String>) -> Failure {
    Failure {
        code: 1,
        message: message.into(),
    }
}

type Res<T> = Result<T, Failure>;

pub async fn run(args: TiersArgs) -> anyhow::Result<()> {
    tally_platform::init_crypto();
    if let Err(f) = dispatch(args).await {
        let _ = std::io::stdout().flush();
        eprintln!("{}", f.message);
        std::process::exit(f.code);
    }
    Ok(())
}

async fn dispatch(args: TiersArgs) -> Res<()> {
    let api = Api::new(&args.url, args.token)?;
    match args.command {
        TiersCommand::Plan(c) => plan(&api, c).await,
        TiersCommand::Apply(c) => apply(&api, c).await,
        TiersCommand::Watch { job_id, json } => watch(&api, job_id, json).await,
        TiersCommand::Jobs { state, limit, json } => jobs(&api, state, limit, json).await,
        TiersCommand::Items {
            job_id,
            state,
            csv,
            json,
        } => items(&api, job_id, state, Format { csv, json }).await,
        TiersCommand::Cancel { job_id } => {
            let job: Job = api
                .json(
                    api.post(&format!("/tiers/jobs/{job_id}/cancel")),
                    "cancel the job",
                )
                .await?;
            say(format!(
                "job {} {}: {} cancelled before being configured{}",
                job.id,
                job.state.replace('_', " "),
                job.cancelled,
                if job.state == "rolling_back" {
                    "; configured devices are being configured back (tally tiers watch follows it)"
                } else {
                    ""
                }
            ));
            Ok(())
        }
        TiersCommand::Pools { drift, csv, json } => pools(&api, drift, csv, json).await,
        TiersCommand::Sync { json } => {
            let s: SyncSummary = api
                .json(api.post("/tiers/pools/sync"), "sync the pools")
                .await?;
            if json {
                return print_json(&s);
            }
            say(format!(
                "synced {} pools of {} from CSSM; {} drifting{}",
                s.pools,
                if s.smart_accounts.is_empty() {
                    "no smart account (no devices yet)".to_owned()
                } else {
                    s.smart_accounts.join(", ")
                },
                s.drifting,
                if s.drifting > 0 {
                    " (tally tiers pools --drift)"
                } else {
                    ""
                }
            ));
            Ok(())
        }
        TiersCommand::ImportPools {
            file,
            smart_account,
            json,
        } => import_pools(&api, &file, smart_account, json).await,
        TiersCommand::Devices(c) => devices(&api, c).await,
        TiersCommand::History(c) => history(&api, c).await,
        TiersCommand::Rules(c) => rules(&api, c).await,
    }
}

/// The REST API with the caller's token.
struct Api {
    http: reqwest::Client,
    /// `<url>/api/v1`
    base: String,
    token: String,
}

#[derive(Deserialize, Default)]
struct ProblemBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    detail: String,
    #[serde(default)]
    errors: Vec<ProblemError>,
}

#[derive(Deserialize)]
struct ProblemError {
    field: String,
    message: String,
}

impl Api {
    fn new(url: &str, token: Option<String>) -> Res<Self> {
        let token = token
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| invalid("error: no API token: pass --token or set TALLY_TOKEN"))?;
        let url = url.trim_end_matches('/');
        // Accept the API root as well as the server's URL.
        let base = if url.ends_with("/api/v1") {
            url.to_owned()
        } else {
            format!("{url}/api/v1")
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Plans and listings of 100,000 devices take a while.
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| failed(format!("error: HTTP client: {e}")))?;
        Ok(Self { http, base, token })
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}{path}", self.base))
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(format!("{}{path}", self.base))
    }

    /// Sends with the token; a non-2xx answer becomes a readable failure.
    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> Res<reqwest::Response> {
        let r = req.bearer_auth(&self.token).send().await.map_err(|e| {
            failed(format!(
                "error: {what}: no answer from {}: {}",
                self.base,
                causes(&e)
            ))
        })?;
        if r.status().is_success() {
            return Ok(r);
        }
        Err(problem(what, r).await)
    }

    async fn json<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder, what: &str) -> Res<T> {
        let r = self.send(req, what).await?;
        parse_body(r, what).await
    }

    async fn text(&self, req: reqwest::RequestBuilder, what: &str) -> Res<String> {
        self.send(req, what)
            .await?
            .text()
            .await
            .map_err(|e| failed(format!("error: {what}: reading the answer: {e}")))
    }
}

/// An error and its causes ("error sending request: ... : Connection refused").
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(c) = next {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = c.source();
    }
    out
}

async fn parse_body<T: DeserializeOwned>(r: reqwest::Response, what: &str) -> Res<T> {
    let bytes = r
        .bytes()
        .await
        .map_err(|e| failed(format!("error: {what}: reading the answer: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| failed(format!("error: {what}: unexpected answer ({e})")))
}

/// Formats an error answer: the problem's code, detail and every field error (RFC 9457), or
/// the raw body when it is not a problem document.
async fn problem(what: &str, r: reqwest::Response) -> Failure {
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    let mut msg = match serde_json::from_str::<ProblemBody>(&body) {
        Ok(p) if !p.code.is_empty() => {
            let mut m = format!("error: {what}: {} (HTTP {status})", p.code);
            if !p.detail.is_empty() {
                m.push_str(&format!(": {}", p.detail));
            } else if !p.title.is_empty() {
                m.push_str(&format!(": {}", p.title));
            }
            // A single field error is the detail already.
            let repeats = matches!(p.errors.as_slice(), [e] if format!("{}: {}", e.field, e.message) == p.detail);
            for e in p.errors.iter().take(MAX_ERRORS).filter(|_| !repeats) {
                m.push_str(&format!("\n  {}: {}", e.field, e.message));
            }
            if p.errors.len() > MAX_ERRORS {
                m.push_str(&format!(
                    "\n  ... and {} more (tally tiers plan --json lists every violation)",
                    p.errors.len() - MAX_ERRORS
                ));
            }
            m
        }
        _ => {
            let body: String = body.trim().chars().take(2000).collect();
            format!("error: {what}: HTTP {status}: {body}")
        }
    };
    match status.as_u16() {
        401 => msg.push_str("\n  hint: check --token / TALLY_TOKEN"),
        403 => msg.push_str(
            "\n  hint: reading needs a viewer token, changes an operator token, rules an admin token",
        ),
        _ => {}
    }
    // 4xx: Tally refused the request and changed nothing (408 and 429 are worth a retry).
    let refused = status.is_client_error() && !matches!(status.as_u16(), 408 | 429);
    Failure {
        code: if refused { 2 } else { 1 },
        message: msg,
    }
}

/// Writes to stdout; a closed pipe (`| head`) ends the output quietly.
fn say(text: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    let r = out
        .write_all(text.as_ref().as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(e) = r
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: writing the output: {e}");
        std::process::exit(1);
    }
}

/// Human notes go to stderr when stdout carries JSON.
fn note(json: bool, text: impl AsRef<str>) {
    if json {
        eprintln!("{}", text.as_ref());
    } else {
        say(text);
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Res<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| failed(format!("error: {e}")))?;
    say(s);
    Ok(())
}

/// Server CSV as it comes (it already ends with a newline).
fn print_raw(text: &str) {
    say(text.strip_suffix('\n').unwrap_or(text));
}

fn read_input(path: &Path) -> Res<Vec<u8>> {
    let mut buf = Vec::new();
    let r = if path == Path::new("-") {
        std::io::stdin().read_to_end(&mut buf).map(|_| ())
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut buf).map(|_| ()))
    };
    r.map_err(|e| invalid(format!("error: reading {}: {e}", path.display())))?;
    Ok(buf)
}

/// Device ids from a CSV's `device_id` column (or `id`, as `tally tiers devices --csv`
/// writes), in file order, without repeats.
fn read_device_ids(path: &Path) -> Res<Vec<Uuid>> {
    let data = read_input(path)?;
    let name = path.display();
    let mut r = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(data.as_slice());
    let headers = r
        .headers()
        .map_err(|e| invalid(format!("error: {name}: {e}")))?
        .clone();
    // Tally answers a listing with no rows with an empty body.
    if headers.is_empty() {
        return Err(invalid(format!("error: {name}: empty: no device ids")));
    }
    let col = ["device_id", "id"]
        .iter()
        .find_map(|c| headers.iter().position(|h| h == *c))
        .ok_or_else(|| {
            invalid(format!(
                "error: {name}: no device_id (or id) column; the header is: {}",
                headers.iter().collect::<Vec<_>>().join(",")
            ))
        })?;
    let mut seen = HashSet::new();
    let mut ids = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| invalid(format!("error: {name}: line {line}: {e}")))?;
        let v = rec.get(col).unwrap_or("");
        if v.is_empty() {
            continue;
        }
        let id = Uuid::parse_str(v).map_err(|e| {
            invalid(format!(
                "error: {name}: line {line}: {v:?} is not a device id: {e}"
            ))
        })?;
        if seen.insert(id) {
            ids.push(id);
        }
    }
    if ids.is_empty() {
        return Err(invalid(format!("error: {name}: no device ids")));
    }
    Ok(ids)
}

fn request(a: &RequestArgs) -> Res<PlanRequest> {
    let s = &a.select;
    let mut device_ids = s.device_ids.clone();
    if let Some(path) = &s.devices_csv {
        for id in read_device_ids(path)? {
            if !device_ids.contains(&id) {
                device_ids.push(id);
            }
        }
    }
    let t = &a.target;
    Ok(PlanRequest {
        select: Selector {
            device_ids,
            site: s.site.clone(),
            group: s.group.clone(),
            model: s.model.clone(),
            hostname: s.hostname.clone(),
            dna_tier: s.current_dna_tier.clone(),
            network_license: s.current_network_license.clone(),
            virtual_account: s.current_virtual_account.clone(),
        },
        target: Target {
            network_license: t.network_license.clone(),
            dna_tier: t.dna_tier.clone(),
            virtual_account: t.virtual_account.clone(),
            dna_license: t.dna_license.clone(),
        },
        mode: match a.mode {
            ModeArg::AllOrNothing => Mode::AllOrNothing,
            ModeArg::BestEffort => Mode::BestEffort,
        },
        expect_fingerprint: None,
    })
}

/// Left-aligned columns, two spaces apart.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = width.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            s.push_str(c);
            if i + 1 < cells.len() {
                let pad = width[i].saturating_sub(c.chars().count()) + 2;
                s.push_str(&" ".repeat(pad));
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = vec![line(headers.to_vec())];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out.join("\n")
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn level(network: &str, dna: Option<&str>) -> String {
    format!("{network} + {}", dna.unwrap_or("no DNA"))
}

fn levels(l: &Levels) -> String {
    format!(
        "{} @ {}",
        level(&l.network_license, l.dna_tier.as_deref()),
        l.virtual_account
    )
}

fn plan_summary(p: &Plan, max_violations: usize) -> String {
    let mut out = vec![
        format!(
            "dry-run ({}): {}",
            p.mode.as_str(),
            if p.executable {
                "executable"
            } else {
                "REFUSED"
            }
        ),
        format!(
            "  {} selected, {} unchanged, {} to change, {} rejected",
            p.selected,
            p.unchanged,
            p.changes.len(),
            p.rejected.len()
        ),
        format!("  fingerprint {}", p.fingerprint),
    ];
    let mut moves: BTreeMap<(String, String), usize> = BTreeMap::new();
    for c in &p.changes {
        *moves.entry((levels(&c.from), levels(&c.to))).or_default() += 1;
    }
    if !moves.is_empty() {
        out.push("\nchanges:".into());
        for ((from, to), n) in moves {
            out.push(format!("  {n:>7}  {from}  ->  {to}"));
        }
    }
    if !p.pools.is_empty() {
        let rows: Vec<Vec<String>> = p
            .pools
            .iter()
            .map(|x| {
                vec![
                    x.virtual_account.clone(),
                    x.license.clone(),
                    opt(x.quantity),
                    x.held_before.to_string(),
                    format!("+{}", x.draws),
                    format!("-{}", x.releases),
                    x.held_after.to_string(),
                    opt(x.available_after),
                    match (x.quantity, x.overcommitted) {
                        (None, _) => "not in CSSM".into(),
                        (_, true) => "OVERCOMMITTED".into(),
                        _ => String::new(),
                    },
                ]
            })
            .collect();
        out.push("\npool impact:".into());
        out.push(indent(&table(
            &[
                "VIRTUAL ACCOUNT",
                "LICENSE",
                "PURCHASED",
                "HELD",
                "DRAW",
                "RELEASE",
                "AFTER",
                "LEFT",
                "",
            ],
            &rows,
        )));
    }
    if !p.rejected.is_empty() {
        let total: usize = p.rejected.iter().map(|r| r.violations.len()).sum();
        out.push(format!(
            "\nviolations ({total} on {} devices):",
            p.rejected.len()
        ));
        let mut shown = 0;
        'outer: for r in &p.rejected {
            for v in &r.violations {
                if shown == max_violations {
                    break 'outer;
                }
                out.push(format!(
                    "  {} ({}): {}: {} [rule: {}]",
                    r.hostname, r.device_id, v.code, v.message, v.rule
                ));
                shown += 1;
            }
        }
        if total > shown {
            out.push(format!(
                "  ... and {} more (--violations N, or --json for all)",
                total - shown
            ));
        }
        if !p.executable {
            out.push(
                "\nnothing would change: fix the violations, narrow the selection, or use --mode best-effort"
                    .into(),
            );
        }
    }
    out.join("\n")
}

fn plan_csv(p: &Plan) -> Res<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let bad = |e: csv::Error| failed(format!("error: writing CSV: {e}"));
    w.write_record([
        "device_id",
        "hostname",
        "from_network_license",
        "from_dna_tier",
        "from_virtual_account",
        "to_network_license",
        "to_dna_tier",
        "to_virtual_account",
        "to_network_pool",
        "to_dna_pool",
    ])
    .map_err(bad)?;
    for c in &p.changes {
        w.write_record([
            c.device_id.to_string().as_str(),
            &c.hostname,
            &c.from.network_license,
            c.from.dna_tier.as_deref().unwrap_or(""),
            &c.from.virtual_account,
            &c.to.network_license,
            c.to.dna_tier.as_deref().unwrap_or(""),
            &c.to.virtual_account,
            c.to.network_pool.as_deref().unwrap_or(""),
            c.to.dna_pool.as_deref().unwrap_or(""),
        ])
        .map_err(bad)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| failed(format!("error: writing CSV: {e}")))?;
    String::from_utf8(bytes).map_err(|e| failed(format!("error: writing CSV: {e}")))
}

async fn dry_run(api: &Api, req: &PlanRequest) -> Res<Plan> {
    api.json(api.post("/tiers/plan").json(req), "dry-run").await
}

async fn plan(api: &Api, c: PlanCmd) -> Res<()> {
    let req = request(&c.req)?;
    let p = dry_run(api, &req).await?;
    if c.json {
        print_json(&p)?;
    } else if c.csv {
        print_raw(&plan_csv(&p)?);
    } else {
        say(plan_summary(&p, c.req.violations));
    }
    if !p.executable {
        return Err(invalid(
            "the plan is not executable: a job with this request would be refused",
        ));
    }
    Ok(())
}

/// A job's idempotency key may already have started a job (a retry): the stored request says
/// which fingerprint it expected, so the retry sends the identical request.
async fn job_with_key(api: &Api, key: &str) -> Res<Option<Job>> {
    let jobs: Vec<Job> = api
        .json(
            api.get("/tiers/jobs").query(&[("limit", 1000)]),
            "list the jobs",
        )
        .await?;
    Ok(jobs
        .into_iter()
        .find(|j| j.idempotency_key.as_deref() == Some(key)))
}

fn confirm(question: &str) -> Res<bool> {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| failed(format!("error: reading the answer: {e}")))?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

async fn apply(api: &Api, c: ApplyCmd) -> Res<()> {
    let mut req = request(&c.req)?;
    req.expect_fingerprint = c.expect_fingerprint.clone();
    let explicit_key = c.idempotency_key.is_some();
    let key = c
        .idempotency_key
        .clone()
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    eprintln!("idempotency key {key} (to retry safely: --idempotency-key {key})");
    // A retry with the key must send the first try's request, which may have carried the
    // fingerprint the operator confirmed.
    let retry = if explicit_key {
        job_with_key(api, &key).await?
    } else {
        None
    };
    if let Some(job) = &retry {
        if req.expect_fingerprint.is_none() {
            req.expect_fingerprint = job
                .request
                .get("expect_fingerprint")
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        eprintln!("job {} was started with this key", job.id);
    }
    if !c.yes && retry.is_none() {
        if !std::io::stdin().is_terminal() {
            return Err(invalid(
                "error: refusing to apply without confirmation: standard input is not a terminal; \
                 dry-run with `tally tiers plan` and pass --yes (with --expect-fingerprint to apply exactly that plan)",
            ));
        }
        let p = dry_run(api, &req).await?;
        eprintln!("{}", plan_summary(&p, c.req.violations));
        if !p.executable {
            return Err(invalid("error: the plan is refused; nothing was changed"));
        }
        if p.changes.is_empty() {
            eprintln!("nothing to change");
            return Ok(());
        }
        if let Some(fp) = &req.expect_fingerprint
            && fp != &p.fingerprint
        {
            return Err(invalid(format!(
                "error: the plan changed since the dry-run (fingerprint {fp} expected, {} now); nothing was changed",
                p.fingerprint
            )));
        }
        if !confirm(&format!(
            "apply {} changes ({})?",
            p.changes.len(),
            p.mode.as_str()
        ))? {
            return Err(failed("not confirmed; nothing was changed"));
        }
        // The job must do exactly what was just confirmed.
        req.expect_fingerprint = Some(p.fingerprint.clone());
    }
    let r = api
        .send(
            api.post("/tiers/jobs")
                .header("Idempotency-Key", &key)
                .json(&req),
            "start the job",
        )
        .await?;
    let created = r.status() == reqwest::StatusCode::CREATED;
    let job: Job = parse_body(r, "start the job").await?;
    if created {
        note(
            c.json,
            format!(
                "job {} {}: {} devices, {} rejected",
                job.id,
                job.state.replace('_', " "),
                job.devices_total,
                job.rejected
            ),
        );
    } else {
        note(
            c.json,
            format!(
                "job {} was already started with this idempotency key; it is {}",
                job.id,
                job.state.replace('_', " ")
            ),
        );
    }
    if c.wait {
        return watch(api, job.id, c.json).await;
    }
    if c.json {
        print_json(&job)?;
    }
    note(
        c.json,
        format!("follow it with: tally tiers watch {}", job.id),
    );
    Ok(())
}

/// Devices the job is finished with (rejected ones never start).
fn progressed(j: &Job) -> u64 {
    u64::try_from(j.applied + j.failed + j.cancelled + j.rejected).unwrap_or(0)
}

/// The bar's message: the state and the counters that are not zero, short enough for 80 columns.
fn progress_message(j: &Job) -> String {
    let mut parts = vec![j.state.replace('_', " ")];
    for (n, what) in [
        (j.applied, "configured"),
        (j.failed, "failed"),
        (j.cancelled, "cancelled"),
        (j.rejected, "rejected"),
        (j.reverted, "configured back"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    parts.join(", ")
}

async fn watch(api: &Api, id: Uuid, json: bool) -> Res<()> {
    let get = || api.json::<Job>(api.get(&format!("/tiers/jobs/{id}")), "follow the job");
    let mut j = get().await?;
    let bar = ProgressBar::new(u64::try_from(j.devices_total).unwrap_or(0));
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg}")
            .map_err(|e| failed(format!("error: progress bar: {e}")))?
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut errors = 0;
    let job = loop {
        bar.set_position(progressed(&j));
        bar.set_message(progress_message(&j));
        if is_finished(&j.state) {
            bar.finish_and_clear();
            break j;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        j = loop {
            match get().await {
                Ok(j) => break j,
                // A blip (a restart, a proxy) does not end the watch; a refusal does.
                Err(f) if f.code == 1 && errors < 10 => {
                    errors += 1;
                    bar.set_message(format!("retrying: {}", f.message));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(f) => {
                    bar.finish_and_clear();
                    return Err(f);
                }
            }
        };
        errors = 0;
    };
    if json {
        print_json(&job)?;
    }
    note(
        json,
        format!(
            "job {} {}: {} of {} devices configured, {} failed, {} cancelled, {} rejected, {} configured back; {} confirmed by a report",
            job.id,
            job.state.replace('_', " "),
            job.applied,
            job.devices_total,
            job.failed,
            job.cancelled,
            job.rejected,
            job.reverted,
            job.confirmed
        ),
    );
    if job.state == "done" {
        if job.applied > job.confirmed {
            note(
                json,
                format!(
                    "the devices run their new level after their next reload; their next report confirms it (tally tiers items {id} --state applied lists those still waiting)"
                ),
            );
        }
        return Ok(());
    }
    if let Some(e) = &job.error {
        eprintln!("  reason: {e}");
    }
    // The first few devices that went wrong, so the operator need not look them up.
    for state in ["failed", "rejected"] {
        let bad: Vec<JobItem> = api
            .json(
                api.get(&format!("/tiers/jobs/{id}/items"))
                    .query(&[("state", state), ("limit", "10")]),
                "list the devices that went wrong",
            )
            .await
            .unwrap_or_default();
        for i in &bad {
            eprintln!(
                "  {state}: {} ({}): {}",
                i.hostname,
                i.device_id,
                i.error.as_deref().unwrap_or(state)
            );
        }
    }
    Err(failed(format!(
        "job {id} ended {} (tally tiers items {id} lists every device)",
        job.state.replace('_', " ")
    )))
}

async fn jobs(api: &Api, state: Option<String>, limit: i64, json: bool) -> Res<()> {
    listing(
        api,
        "/tiers/jobs",
        query(limit, [("state", state)]),
        "list the jobs",
        Format { csv: false, json },
        &[
            "JOB",
            "STATE",
            "MODE",
            "DEVICES",
            "CONFIGURED",
            "CONFIRMED",
            "FAILED",
            "REJECTED",
            "CANCELLED",
            "REVERTED",
            "CREATED (UTC)",
            "BY",
        ],
        |j: &Job| {
            vec![
                j.id.to_string(),
                j.state.clone(),
                j.mode.clone(),
                j.devices_total.to_string(),
                j.applied.to_string(),
                j.confirmed.to_string(),
                j.failed.to_string(),
                j.rejected.to_string(),
                j.cancelled.to_string(),
                j.reverted.to_string(),
                j.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                j.requested_by.clone(),
            ]
        },
    )
    .await
}

/// How a listing is printed.
#[derive(Clone, Copy)]
struct Format {
    csv: bool,
    json: bool,
}

/// The filters that are set, as query pairs.
fn query<const N: usize>(
    limit: i64,
    filters: [(&'static str, Option<String>); N],
) -> Vec<(&'static str, String)> {
    let mut q = vec![("limit", limit.to_string())];
    q.extend(filters.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
    q
}

/// A listing: CSV as Tally writes it, JSON, or a table with a row per entry.
async fn listing<T: DeserializeOwned + serde::Serialize>(
    api: &Api,
    path: &str,
    mut q: Vec<(&'static str, String)>,
    what: &str,
    format: Format,
    headers: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> Res<()> {
    if format.csv {
        q.push(("format", "csv".into()));
        print_raw(&api.text(api.get(path).query(&q), what).await?);
        return Ok(());
    }
    let entries: Vec<T> = api.json(api.get(path).query(&q), what).await?;
    if format.json {
        return print_json(&entries);
    }
    let rows: Vec<Vec<String>> = entries.iter().map(row).collect();
    say(table(headers, &rows));
    Ok(())
}

async fn items(api: &Api, id: Uuid, state: Option<String>, format: Format) -> Res<()> {
    listing(
        api,
        &format!("/tiers/jobs/{id}/items"),
        query(ALL, [("state", state)]),
        "list the job's devices",
        format,
        &["HOSTNAME", "DEVICE", "STATE", "FROM", "TO", "ERROR"],
        |i: &JobItem| {
            vec![
                i.hostname.clone(),
                i.device_id.to_string(),
                i.state.clone(),
                format!(
                    "{} @ {}",
                    level(&i.from_network, i.from_dna.as_deref()),
                    i.from_va
                ),
                format!(
                    "{} @ {}",
                    level(&i.to_network, i.to_dna.as_deref()),
                    i.to_va
                ),
                i.error.clone().unwrap_or_default(),
            ]
        },
    )
    .await
}

fn pools_table(pools: &[PoolView]) -> String {
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            vec![
                p.smart_account.clone(),
                p.virtual_account.clone(),
                p.license.clone(),
                opt(p.quantity),
                opt(p.cssm_in_use),
                p.held.to_string(),
                opt(p.available),
                opt(p.drift),
                match (p.quantity, p.overcommitted) {
                    (None, _) => "not in CSSM".into(),
                    (_, true) => "OVERCOMMITTED".into(),
                    _ => String::new(),
                },
            ]
        })
        .collect();
    table(
        &[
            "SMART ACCOUNT",
            "VIRTUAL ACCOUNT",
            "LICENSE",
            "PURCHASED",
            "CSSM IN USE",
            "HELD",
            "LEFT",
            "DRIFT",
            "",
        ],
        &rows,
    )
}

async fn pools(api: &Api, drift: bool, csv: bool, json: bool) -> Res<()> {
    let path = if drift {
        "/tiers/pools/drift"
    } else {
        "/tiers/pools"
    };
    if csv {
        let text = api
            .text(api.get(path).query(&[("format", "csv")]), "list the pools")
            .await?;
        print_raw(&text);
        return Ok(());
    }
    let pools: Vec<PoolView> = api.json(api.get(path), "list the pools").await?;
    if json {
        return print_json(&pools);
    }
    if pools.is_empty() {
        say(if drift {
            "no drift: Tally's ledger and CSSM agree on every pool"
        } else {
            "no pools: sync them (tally tiers sync) or import them (tally tiers import-pools)"
        });
        return Ok(());
    }
    say(pools_table(&pools));
    Ok(())
}

async fn import_pools(
    api: &Api,
    file: &Path,
    smart_account: Option<String>,
    json: bool,
) -> Res<()> {
    let doc: Value = serde_json::from_slice(&read_input(file)?)
        .map_err(|e| invalid(format!("error: {}: not JSON: {e}", file.display())))?;
    let (licenses, file_sa) = match doc {
        Value::Array(a) => (a, None),
        Value::Object(mut o) => match o.remove("licenses") {
            Some(Value::Array(a)) => (
                a,
                o.get("smart_account")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            ),
            _ => {
                return Err(invalid(format!(
                    "error: {}: expected CSSM's licenses answer ({{\"licenses\": [...]}}) or its licenses array",
                    file.display()
                )));
            }
        },
        _ => {
            return Err(invalid(format!(
                "error: {}: expected CSSM's licenses answer ({{\"licenses\": [...]}}) or its licenses array",
                file.display()
            )));
        }
    };
    let sa = smart_account.or(file_sa).ok_or_else(|| {
        invalid("error: name the smart account the pools belong to: --smart-account SA")
    })?;
    let n = licenses.len();
    let body = serde_json::json!({"smart_account": sa, "licenses": licenses});
    let pools: Vec<PoolView> = api
        .json(
            api.post("/tiers/pools/import").json(&body),
            "import the pools",
        )
        .await?;
    if json {
        return print_json(&pools);
    }
    note(
        false,
        format!("imported {n} license lines for smart account {sa}"),
    );
    say(pools_table(&pools));
    Ok(())
}

async fn devices(api: &Api, c: DevicesCmd) -> Res<()> {
    let q = query(
        c.limit,
        [
            ("site", c.site),
            ("group", c.group),
            ("model", c.model),
            ("dna_tier", c.dna_tier),
            ("state", c.state),
        ],
    );
    let format = Format {
        csv: c.csv,
        json: c.json,
    };
    listing(
        api,
        "/tiers/devices",
        q,
        "list the devices",
        format,
        &[
            "HOSTNAME",
            "DEVICE",
            "MODEL",
            "SITE",
            "VIRTUAL ACCOUNT",
            "NETWORK",
            "DNA",
            "STATE",
            "REPORTED DNA",
        ],
        |d: &LedgerDevice| {
            vec![
                d.hostname.clone(),
                d.id.to_string(),
                d.model.clone(),
                d.site.clone(),
                d.virtual_account.clone(),
                d.network_license.clone(),
                d.dna_tier.clone().unwrap_or_else(|| "none".into()),
                d.state.clone(),
                opt(d.reported_dna_tier.as_deref()),
            ]
        },
    )
    .await
}

async fn history(api: &Api, c: HistoryCmd) -> Res<()> {
    let q = query(
        c.limit,
        [
            ("device_id", c.device_id.map(|d| d.to_string())),
            ("kind", c.kind),
            ("job_id", c.job_id.map(|j| j.to_string())),
            ("since", c.since),
            ("until", c.until),
            ("after", c.after.map(|a| a.to_string())),
        ],
    );
    let format = Format {
        csv: c.csv,
        json: c.json,
    };
    listing(
        api,
        "/tiers/history",
        q,
        "read the history",
        format,
        &[
            "AT (UTC)", "DEVICE", "KIND", "EVENT", "FROM", "TO", "JOB", "DETAIL",
        ],
        |h: &HistoryEntry| {
            vec![
                h.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                h.hostname
                    .clone()
                    .unwrap_or_else(|| h.device_id.to_string()),
                h.kind.clone(),
                h.event.clone(),
                opt(h.from_value.as_deref()),
                opt(h.to_value.as_deref()),
                opt(h.job_id),
                h.detail.clone(),
            ]
        },
    )
    .await
}

/// `rules get` prints the rules document alone, so `rules get > f; edit f; rules put f` works;
/// `put` also takes the API's `{"version", "rules"}` answer.
async fn rules(api: &Api, c: RulesCommand) -> Res<()> {
    match c {
        RulesCommand::Get => {
            let mut doc: Value = api.json(api.get("/tiers/rules"), "read the rules").await?;
            match doc["version"].as_i64() {
                Some(0) => eprintln!("rules: the shipped defaults"),
                v => eprintln!("rules version {}", opt(v)),
            }
            print_json(&doc["rules"].take())
        }
        RulesCommand::Put { file } => {
            let raw = read_input(&file)?;
            let mut doc: Value = serde_json::from_slice(&raw)
                .map_err(|e| invalid(format!("error: {}: not JSON: {e}", file.display())))?;
            if doc.get("version").is_some()
                && let Some(inner) = doc.get_mut("rules")
            {
                doc = inner.take();
            }
            let stored: Value = api
                .json(
                    api.http.put(format!("{}/tiers/rules", api.base)).json(&doc),
                    "store the rules",
                )
                .await?;
            say(format!("rules stored as version {}", stored["version"]));
            Ok(())
        }
        RulesCommand::Reset => {
            api.json::<Value>(
                api.http.delete(format!("{}/tiers/rules", api.base)),
                "reset the rules",
            )
            .await?;
            say("rules reset to the shipped defaults");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn device_ids_come_from_either_csv_the_cli_writes() {
        let dir = tempfile_dir();
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        // `items --csv`: device_id column; `devices --csv`: id column; repeats dropped.
        let items = dir.join("items.csv");
        std::fs::write(
            &items,
            format!("device_id,hostname,state\n{a},sw-1,applied\n{b},sw-2,failed\n{a},sw-1,x\n"),
        )
        .unwrap();
        assert_eq!(read_device_ids(&items).unwrap(), vec![a, b]);
        let devices = dir.join("devices.csv");
        std::fs::write(&devices, format!("id,hostname\n{b},sw-2\n")).unwrap();
        assert_eq!(read_device_ids(&devices).unwrap(), vec![b]);
        let bad = dir.join("bad.csv");
        std::fs::write(&bad, "hostname\nsw-1\n").unwrap();
        let e = read_device_ids(&bad).unwrap_err();
        assert_eq!(e.code, 2);
        assert!(e.message.contains("no device_id"), "{}", e.message);
        std::fs::write(&bad, "device_id\nnot-a-uuid\n").unwrap();
        assert!(
            read_device_ids(&bad)
                .unwrap_err()
                .message
                .contains("line 2")
        );
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("tally-tiers-cli-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["A", "BB"],
            &[vec!["long".into(), "x".into()], vec!["s".into(), "".into()]],
        );
        assert_eq!(t, "A     BB\nlong  x\ns");
    }
}
