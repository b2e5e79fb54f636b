//! Bulk DNA tier assignment as an operator does it: the `tally tiers` CLI against `tally serve`,
//! the fleet simulator (RESTCONF boot level, reload) and the CSSM simulator (pools that match the
//! fleet), on real Postgres and NATS. Needs what e2e/README.md lists and `cargo build -p tally`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tally_e2e::{ADMIN_TOKEN, Online, Tally, VIEWER_TOKEN, get_json, http_client, tally_bin};

const DEVICES: usize = 200;
const TARGET: [&str; 4] = [
    "--network-license",
    "network-advantage",
    "--dna-tier",
    "dna-advantage",
];

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.context()))
    }
    fn context(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `tally tiers <args>` as an operator would: no terminal, URL and token from the
/// environment.
async fn cli(tally: &Tally, token: &str, args: &[&str]) -> Out {
    let t = Instant::now();
    let mut cmd = tokio::process::Command::new(tally_bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TALLY_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .arg("tiers")
        .args(args)
        .env("TALLY_URL", &tally.base)
        .env("TALLY_TOKEN", token)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("running tally tiers");
    let out = Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!(
        "[e2e] tally tiers {}: exit {} in {:.2} s",
        args.join(" "),
        out.code,
        t.elapsed().as_secs_f64()
    );
    out
}

async fn cli_ok(tally: &Tally, args: &[&str]) -> Out {
    let out = cli(tally, ADMIN_TOKEN, args).await;
    assert_eq!(
        out.code,
        0,
        "tally tiers {}\n{}",
        args.join(" "),
        out.context()
    );
    out
}

fn csv_rows(text: &str) -> Vec<HashMap<String, String>> {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let headers = r.headers().expect("CSV header").clone();
    r.records()
        .map(|rec| {
            let rec = rec.expect("CSV record");
            headers
                .iter()
                .zip(rec.iter())
                .map(|(h, v)| (h.to_owned(), v.to_owned()))
                .collect()
        })
        .collect()
}

async fn wait_until<F, Fut>(what: &str, within: Duration, mut f: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (bool, Value)>,
{
    let deadline = Instant::now() + within;
    loop {
        let (done, v) = f().await;
        if done {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not within {within:?}: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A simulator's test hook; its JSON answer.
async fn sim_call(req: reqwest::RequestBuilder, body: Value) -> Value {
    let r = req.json(&body).send().await.expect("simulator answers");
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    assert!(status.is_success(), "simulator: HTTP {status}: {text}");
    serde_json::from_str(&text).expect("simulator answers JSON")
}

/// The entitlement tag of a device's newest report, read through its own smartlic-service API.
async fn newest_tag(http: &reqwest::Client, dev: &Value) -> String {
    let base = dev["base_url"].as_str().expect("base_url");
    let r = http
        .get(format!("{base}/smartlic-service/days/1"))
        .basic_auth(
            dev["username"].as_str().expect("username"),
            dev["password"].as_str(),
        )
        .send()
        .await
        .expect("device report listing");
    assert!(r.status().is_success(), "{base}: HTTP {}", r.status());
    let v: Value = r.json().await.expect("device reports are JSON");
    let (_, tag) = v["usage"]
        .as_array()
        .expect("usage list")
        .iter()
        .map(|rep| {
            let p: Value =
                serde_json::from_str(rep["payload"].as_str().expect("payload text")).unwrap();
            (
                p["asset_identification"]["report_id"].as_u64().unwrap(),
                p["meta"]["entitlement_tag"].as_str().unwrap().to_owned(),
            )
        })
        .max()
        .unwrap_or_else(|| panic!("{base} has no report"));
    tag
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_assign_dna_advantage_to_a_site_through_the_cli() {
    let t0 = Instant::now();
    let Online {
        fleet,
        cssm,
        mut tally,
    } = Online::start(DEVICES, 300).await;
    let http = http_client();

    wait_until(
        "the tier ledger has every device",
        Duration::from_secs(30),
        || async {
            let d = tally.get("/tiers/devices").await;
            (
                d.as_array().map_or(0, Vec::len) == DEVICES,
                json!(d.as_array().map(Vec::len)),
            )
        },
    )
    .await;
    let sync = cli_ok(&tally, &["sync"]).await;
    assert!(sync.stdout.contains("from CSSM"), "{}", sync.context());

    // A branch site where the change fits every rule and pool (the fleet is random).
    let sim_devices = get_json(&http, &format!("{}/sim/devices", fleet.base)).await;
    let sim_devices = sim_devices.as_array().unwrap();
    let mut sites: Vec<String> = sim_devices
        .iter()
        .filter_map(|d| d["site"].as_str())
        .filter(|s| s.starts_with("branch-"))
        .map(str::to_owned)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    sites.sort();
    let mut chosen = None;
    for s in &sites {
        let p = tally
            .post_json(
                "/tiers/plan",
                &json!({"select": {"site": s},
                        "target": {"network_license": "network-advantage", "dna_tier": "dna-advantage"}}),
            )
            .await;
        if p["executable"] == true && p["changes"].as_array().is_some_and(|c| c.len() >= 2) {
            chosen = Some(s.clone());
            break;
        }
    }
    let site = chosen.expect("no branch site where the change is executable");
    let site_devices: Vec<&Value> = sim_devices.iter().filter(|d| d["site"] == site).collect();

    // Dry-run through the CLI, then apply exactly that plan.
    let mut plan_args = vec!["plan", "--site", &site];
    plan_args.extend(TARGET);
    plan_args.push("--json");
    let plan = cli_ok(&tally, &plan_args).await.json();
    assert_eq!(plan["executable"], true, "{plan:#}");
    let changes = plan["changes"].as_array().unwrap();
    assert!(!changes.is_empty());
    let changed: HashSet<&str> = changes
        .iter()
        .map(|c| c["hostname"].as_str().unwrap())
        .collect();
    let fp = plan["fingerprint"].as_str().unwrap();

    // A script without a terminal must say --yes; a viewer may not apply; neither changes anything.
    let mut apply_args = vec!["apply", "--site", &site];
    apply_args.extend(TARGET);
    let no_tty = cli(&tally, ADMIN_TOKEN, &apply_args).await;
    assert_eq!(no_tty.code, 2, "{}", no_tty.context());
    assert!(no_tty.stderr.contains("--yes"), "{}", no_tty.context());
    apply_args.extend(["--yes", "--expect-fingerprint", fp]);
    let viewer = cli(&tally, VIEWER_TOKEN, &apply_args).await;
    assert_eq!(viewer.code, 2, "{}", viewer.context());
    assert!(viewer.stderr.contains("HTTP 403"), "{}", viewer.context());

    let t_apply = Instant::now();
    apply_args.extend(["--wait", "--json"]);
    let applied = cli_ok(&tally, &apply_args).await;
    assert!(
        applied.stderr.contains("idempotency key"),
        "{}",
        applied.context()
    );
    let job = applied.json();
    let job_id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(job["state"], "done", "{job:#}");
    assert_eq!(job["applied"], changes.len(), "{job:#}");
    eprintln!(
        "[e2e] site {site}: {} of {} devices configured in {:.1} s",
        changes.len(),
        site_devices.len(),
        t_apply.elapsed().as_secs_f64()
    );

    // The devices have the new boot level configured and wait for a reload.
    let sim_devices = get_json(&http, &format!("{}/sim/devices", fleet.base)).await;
    let site_devices: Vec<&Value> = sim_devices
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["site"] == site)
        .collect();
    for d in &site_devices {
        assert_eq!(d["configured_dna_tier"], "dna-advantage", "{d:#}");
        assert_eq!(
            d["configured_network_license"], "network-advantage",
            "{d:#}"
        );
        let host = d["hostname"].as_str().unwrap();
        assert_eq!(d["pending_reload"], changed.contains(host), "{d:#}");
    }
    let waiting = tally
        .get(&format!("/tiers/devices?site={site}&state=pending_reload"))
        .await;
    assert_eq!(waiting.as_array().unwrap().len(), changes.len());

    let r = sim_call(
        http.post(format!("{}/sim/reload", fleet.base)),
        json!({"site": site}),
    )
    .await;
    assert_eq!(r["changed"], changes.len(), "{r}");

    // The next license cycle collects reports showing the new tier: that confirms the job.
    let id = tally.start_cycle().await;
    tally
        .wait_cycle_complete(&id, Duration::from_secs(60))
        .await;
    let job = wait_until("the job confirmed", Duration::from_secs(20), || async {
        let j = tally.get(&format!("/tiers/jobs/{job_id}")).await;
        (j["confirmed"] == j["applied"], j)
    })
    .await;
    assert_eq!(job["confirmed"], changes.len(), "{job:#}");

    let sim_devices = get_json(&http, &format!("{}/sim/devices", fleet.base)).await;
    for d in sim_devices
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["site"] == site)
    {
        assert_eq!(d["dna_tier"], "dna-advantage", "{d:#}");
        assert_eq!(d["network_license"], "network-advantage", "{d:#}");
        assert_eq!(d["pending_reload"], false, "{d:#}");
        let newest = newest_tag(&http, d).await;
        assert!(
            newest.contains("DNA_Advantage"),
            "{}: {newest}",
            d["hostname"]
        );
    }
    let ledger = tally.get(&format!("/tiers/devices?site={site}")).await;
    let ledger = ledger.as_array().unwrap();
    assert_eq!(ledger.len(), site_devices.len());
    for d in ledger {
        assert_eq!(d["state"], "active", "{d:#}");
        assert_eq!(d["dna_tier"], "dna-advantage", "{d:#}");
        if changed.contains(d["hostname"].as_str().unwrap()) {
            assert_eq!(d["reported_dna_tier"], "dna-advantage", "{d:#}");
        }
    }

    // History: the job's configured rows, and a confirmed row for each of its devices.
    let hist = cli_ok(&tally, &["history", "--job-id", &job_id, "--csv"]).await;
    let rows = csv_rows(&hist.stdout);
    let configured: HashSet<&str> = rows
        .iter()
        .filter(|r| r["event"] == "configured" && r["kind"] == "tier")
        .map(|r| r["device_id"].as_str())
        .collect();
    assert_eq!(configured.len(), changes.len(), "{}", hist.stdout);
    // Each device's next report confirmed the level the job configured.
    let confirmed: HashSet<&str> = rows
        .iter()
        .filter(|r| {
            r["event"] == "confirmed" && r["to_value"] == "network-advantage addon dna-advantage"
        })
        .map(|r| r["device_id"].as_str())
        .collect();
    assert_eq!(confirmed, configured, "{}", hist.stdout);

    // The job's devices as CSV select the same devices again: nothing is left to change.
    let items = cli_ok(&tally, &["items", &job_id, "--csv"]).await;
    let csv_path = std::env::temp_dir().join(format!("tally-e2e-{}-items.csv", tally.namespace));
    std::fs::write(&csv_path, &items.stdout).unwrap();
    let mut again = vec!["plan", "--devices-csv", csv_path.to_str().unwrap()];
    again.extend(TARGET);
    again.push("--json");
    let again = cli_ok(&tally, &again).await.json();
    assert_eq!(again["selected"], changes.len(), "{again:#}");
    assert_eq!(again["unchanged"], changes.len(), "{again:#}");
    let _ = std::fs::remove_file(&csv_path);

    // Overcommit: CSSM now lists no spare license in a pool another site's change draws on.
    let mut refused = None;
    for s in sites.iter().filter(|s| **s != site) {
        let p = tally
            .post_json(
                "/tiers/plan",
                &json!({"select": {"site": s}, "target": {"dna_tier": "dna-premier", "network_license": "network-advantage"}}),
            )
            .await;
        if let Some(pool) = p["pools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["draws"].as_i64().unwrap_or(0) > 0 && x["quantity"].is_i64())
        {
            refused = Some((s.clone(), pool.clone()));
            break;
        }
    }
    let (site2, pool) = refused.expect("a site whose change draws on a pool");
    let (va, license) = (
        pool["virtual_account"].as_str().unwrap(),
        pool["license"].as_str().unwrap(),
    );
    let held = pool["held_before"].as_i64().unwrap();
    sim_call(
        http.patch(format!("{}/sim/licenses", cssm.base)),
        json!([{"virtual_account": va, "license": license, "quantity": held}]),
    )
    .await;
    cli_ok(&tally, &["sync"]).await;
    let pools = csv_rows(&cli_ok(&tally, &["pools", "--csv"]).await.stdout);
    assert!(
        pools.iter().any(|p| p["virtual_account"] == va
            && p["license"] == license
            && p["quantity"] == held.to_string()),
        "the sync did not take the new quantity"
    );
    let over = cli(
        &tally,
        ADMIN_TOKEN,
        &[
            "apply",
            "--site",
            &site2,
            "--network-license",
            "network-advantage",
            "--dna-tier",
            "dna-premier",
            "--yes",
        ],
    )
    .await;
    assert_eq!(over.code, 2, "{}", over.context());
    assert!(over.stderr.contains("plan-refused"), "{}", over.context());
    assert!(
        over.stderr.contains("pool-overcommit") && over.stderr.contains(license),
        "the refusal names the pool\n{}",
        over.context()
    );
    let jobs = tally.get("/tiers/jobs").await;
    assert_eq!(
        jobs.as_array().unwrap().len(),
        1,
        "a refused job left a job"
    );
    let busy = tally
        .get(&format!("/tiers/devices?site={site2}&state=applying"))
        .await;
    assert_eq!(busy.as_array().unwrap().len(), 0);

    // Rules are data: a broken document is refused naming the field; a stricter minimum
    // software version turns the same plan into software-too-old rejections; reset restores it.
    let rules_file = std::env::temp_dir().join(format!("tally-e2e-{}-rules.json", tally.namespace));
    let mut rules: Value =
        serde_json::from_str(&cli_ok(&tally, &["rules", "get"]).await.stdout).unwrap();
    rules["licenses"][0]["models"] = serde_json::json!([]);
    std::fs::write(&rules_file, rules.to_string()).unwrap();
    let bad = cli(
        &tally,
        ADMIN_TOKEN,
        &["rules", "put", rules_file.to_str().unwrap()],
    )
    .await;
    assert_eq!(bad.code, 2, "{}", bad.context());
    assert!(
        bad.stderr.contains("licenses[0].models"),
        "{}",
        bad.context()
    );
    let mut rules: Value =
        serde_json::from_str(&cli_ok(&tally, &["rules", "get"]).await.stdout).unwrap();
    rules["min_software_version"] = "99.1.1".into();
    std::fs::write(&rules_file, rules.to_string()).unwrap();
    cli_ok(&tally, &["rules", "put", rules_file.to_str().unwrap()]).await;
    let mut strict = vec!["plan", "--site", &site2];
    strict.extend(["--dna-tier", "dna-essentials", "--json"]);
    let strict = cli(&tally, ADMIN_TOKEN, &strict).await;
    let strict: Value = serde_json::from_str(&strict.stdout).unwrap();
    let rejected = strict["rejected"].as_array().unwrap();
    assert!(!rejected.is_empty(), "{strict:#}");
    assert!(
        rejected
            .iter()
            .all(|r| r["violations"][0]["code"] == "software-too-old")
    );
    assert!(
        rejected[0]["violations"][0]["rule"]
            .as_str()
            .unwrap()
            .contains("99.1.1")
    );
    cli_ok(&tally, &["rules", "reset"]).await;
    let rules: Value =
        serde_json::from_str(&cli_ok(&tally, &["rules", "get"]).await.stdout).unwrap();
    assert_eq!(rules["min_software_version"], "17.3.2");
    let _ = std::fs::remove_file(&rules_file);

    tally.proc.assert_running();
    eprintln!("[e2e] total {:.1} s", t0.elapsed().as_secs_f64());
}
