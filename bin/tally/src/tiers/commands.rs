//! The commands of `tally tiers`, each a few calls on [`tally_client::Client`].

use super::args::{
    ALL, ApplyCmd, DevicesCmd, HistoryCmd, PlanCmd, RulesCommand, read_input, request,
};
use super::render::{
    level, note, opt, plan_csv, plan_summary, pools_table, print_json, print_raw, progress_message,
    progressed, say, table,
};
use super::{Doing, Res, failed, invalid};
use indicatif::{ProgressBar, ProgressStyle};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;
use tally_client::{Client, Listing, StatusCode};
use tally_tier_assignment::api::{HistoryEntry, JobItem, LedgerDevice};
use tally_tier_assignment::jobs::{Job, is_finished};
use tally_tier_assignment::plan::{Plan, PlanRequest};
use tally_tier_assignment::pools::{PoolView, SyncSummary};
use uuid::Uuid;

async fn dry_run(api: &Client, req: &PlanRequest) -> Res<Plan> {
    api.tier_plan(req).await.doing("dry-run")
}

pub(super) async fn plan(api: &Client, c: PlanCmd) -> Res<()> {
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
async fn job_with_key(api: &Client, key: &str) -> Res<Option<Job>> {
    let jobs: Vec<Job> = api
        .list(Listing::TierJobs, &[("limit", 1000)])
        .await
        .doing("list the jobs")?;
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

pub(super) async fn apply(api: &Client, c: ApplyCmd) -> Res<()> {
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
    let started = api
        .start_tier_job::<Job>(&key, &req)
        .await
        .doing("start the job")?;
    let created = started.status == StatusCode::CREATED;
    let job = started.body;
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

pub(super) async fn watch(api: &Client, id: Uuid, json: bool) -> Res<()> {
    let get = || async { api.tier_job::<Job>(id).await.doing("follow the job") };
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
            .list(
                Listing::TierJobItems(id),
                &[("state", state), ("limit", "10")],
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

pub(super) async fn jobs(api: &Client, state: Option<String>, limit: i64, json: bool) -> Res<()> {
    listing(
        api,
        Listing::TierJobs,
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
pub(super) struct Format {
    pub(super) csv: bool,
    pub(super) json: bool,
}

/// A listing's query when it takes none.
const NO_QUERY: &[(&str, &str)] = &[];

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
    api: &Client,
    list: Listing,
    q: Vec<(&'static str, String)>,
    what: &str,
    format: Format,
    headers: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> Res<()> {
    if format.csv {
        print_raw(&api.list_csv(list, &q).await.doing(what)?);
        return Ok(());
    }
    let entries: Vec<T> = api.list(list, &q).await.doing(what)?;
    if format.json {
        return print_json(&entries);
    }
    let rows: Vec<Vec<String>> = entries.iter().map(row).collect();
    say(table(headers, &rows));
    Ok(())
}

pub(super) async fn items(
    api: &Client,
    id: Uuid,
    state: Option<String>,
    format: Format,
) -> Res<()> {
    listing(
        api,
        Listing::TierJobItems(id),
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

pub(super) async fn pools(api: &Client, drift: bool, csv: bool, json: bool) -> Res<()> {
    let list = if drift {
        Listing::TierPoolDrift
    } else {
        Listing::TierPools
    };
    if csv {
        let text = api.list_csv(list, NO_QUERY).await.doing("list the pools")?;
        print_raw(&text);
        return Ok(());
    }
    let pools: Vec<PoolView> = api.list(list, NO_QUERY).await.doing("list the pools")?;
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

pub(super) async fn import_pools(
    api: &Client,
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
        .import_tier_pools(&body)
        .await
        .doing("import the pools")?;
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

pub(super) async fn devices(api: &Client, c: DevicesCmd) -> Res<()> {
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
        Listing::TierDevices,
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

pub(super) async fn history(api: &Client, c: HistoryCmd) -> Res<()> {
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
        Listing::TierHistory,
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
pub(super) async fn rules(api: &Client, c: RulesCommand) -> Res<()> {
    match c {
        RulesCommand::Get => {
            let mut doc: Value = api.tier_rules().await.doing("read the rules")?;
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
            let stored: Value = api.put_tier_rules(&doc).await.doing("store the rules")?;
            say(format!("rules stored as version {}", stored["version"]));
            Ok(())
        }
        RulesCommand::Reset => {
            api.reset_tier_rules::<Value>()
                .await
                .doing("reset the rules")?;
            say("rules reset to the shipped defaults");
            Ok(())
        }
    }
}

pub(super) async fn cancel(api: &Client, job_id: Uuid) -> Res<()> {
    let job: Job = api.cancel_tier_job(job_id).await.doing("cancel the job")?;
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

pub(super) async fn sync(api: &Client, json: bool) -> Res<()> {
    let s: SyncSummary = api.sync_tier_pools().await.doing("sync the pools")?;
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
