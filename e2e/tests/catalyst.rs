//! Catalyst Center automation against Tally: Cisco's `dnacentersdk` from PyPI, unchanged, runs
//! e2e/scripts/dnac_sdk_check.py against `tally serve` with a simulated fleet: token auth, the
//! device license summary paged across the fleet, count, smart and virtual accounts, and a change
//! of virtual account that tier-assignment carries out. Needs python3 with venv and PyPI access.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use tally_e2e::{ADMIN_TOKEN, Online, http_client};

const DEVICES: usize = 600;
/// The SDK release this test was written against; its 3.1.6.0 API matches Tally's paths.
const SDK: &str = "dnacentersdk==2.11.0";
const TRANSFER: usize = 5;

fn run(cmd: &mut Command, what: &str) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A venv with the SDK under the target dir, made once and reused while it still imports.
fn sdk_python() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let venv = target.join("e2e-venv-dnacentersdk");
    let python = venv.join("bin").join("python");
    let ready = python.is_file()
        && Command::new(&python)
            .args(["-c", "import dnacentersdk"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !ready {
        run(
            Command::new("python3")
                .arg("-m")
                .arg("venv")
                .arg("--clear")
                .arg(&venv),
            "python3 -m venv",
        );
        run(
            Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                SDK,
            ]),
            &format!("pip install {SDK}"),
        );
    }
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnacentersdk_works_against_tally_unchanged() {
    let t0 = Instant::now();
    let python = tokio::task::spawn_blocking(sdk_python).await.unwrap();
    eprintln!("SDK venv ready in {:?}", t0.elapsed());
    let on = Online::start(DEVICES, 0).await;
    let tally = &on.tally;
    // The scheduler's fleet copy follows inventory's events: wait until it has every device.
    let http = http_client();
    let token: String = {
        let r = http
            .post(format!("{}/dna/system/api/v1/auth/token", tally.base))
            .basic_auth("ops", Some(ADMIN_TOKEN))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()["Token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let get = |path: String| {
        let http = http.clone();
        let token = token.clone();
        let base = tally.base.clone();
        async move {
            let r = http
                .get(format!("{base}{path}"))
                .header("X-Auth-Token", token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "GET {path}");
            r.json::<Value>().await.unwrap()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while get("/dna/intent/api/v1/licenses/device/count".into()).await["response"] != DEVICES {
        assert!(
            Instant::now() < deadline,
            "the scheduler never saw the whole fleet"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Pools from CSSM, as an operator syncs them before moving licenses between accounts.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = match tally.client.sync_tier_pools::<Value>().await {
            Ok(_) => break,
            Err(e) => e.status().unwrap_or_else(|| panic!("pool sync: {e}")),
        };
        assert!(Instant::now() < deadline, "pool sync: {status}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/dnac_sdk_check.py");
    let t1 = Instant::now();
    let out = {
        let base = tally.base.clone();
        tokio::task::spawn_blocking(move || {
            run(
                Command::new(&python)
                    .arg(&script)
                    .env("TALLY_BASE", base)
                    .env("TALLY_USER", "automation")
                    .env("TALLY_PASSWORD", ADMIN_TOKEN)
                    .env("DNAC_VERSION", "3.1.6.0")
                    .env("TRANSFER_COUNT", TRANSFER.to_string()),
                "dnac_sdk_check.py",
            )
        })
        .await
        .unwrap()
    };
    eprintln!("SDK script ran in {:?}", t1.elapsed());
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "script output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });

    assert_eq!(r["count"], DEVICES);
    assert_eq!(r["pages"], 2, "600 devices at 500 a page");
    assert_eq!(r["summary_total"], DEVICES);
    assert_eq!(r["unique_ids"], DEVICES);
    let item = &r["first_item"];
    for f in [
        "device_uuid",
        "device_name",
        "device_type",
        "model",
        "ip_address",
        "site",
        "software_version",
        "dna_level",
        "network_license",
        "license_mode",
        "registration_status",
        "virtual_account_name",
        "smart_account_name",
        "last_updated_time",
    ] {
        assert!(item[f].is_string(), "{f} in {item}");
    }
    assert_eq!(
        item["ip_address"], "127.0.0.1",
        "the host of the simulated device's URL"
    );
    assert_eq!(r["smart_accounts"][0]["name"], "acme.example");
    let vas: Vec<&str> = r["virtual_accounts"]["virtual_account_details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["virtual_account_name"].as_str().unwrap())
        .collect();
    assert_eq!(vas, ["Branch", "Campus", "Voice"]);

    let tr = &r["transfer"];
    let target = tr["target"].as_str().unwrap().to_owned();
    let task = &tr["task"];
    assert_eq!(task["isError"], false, "{task}");
    assert!(task["endTime"].is_i64(), "task ended: {task}");
    let job = task["data"].as_str().unwrap();
    assert!(task["progress"].as_str().unwrap().contains(job), "{task}");
    let moved: Vec<String> = tr["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(moved.len(), TRANSFER);
    assert_eq!(
        r["network_summary"]["response"]["totalDeviceCount"],
        DEVICES
    );

    // The tier job moves them; the summary shows the new virtual account once it is done.
    let t2 = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut done = 0;
        for d in &moved {
            let s = get(format!(
                "/dna/intent/api/v1/licenses/device/summary?page_number=1&order=asc&limit=1&device_uuid={d}"
            ))
            .await;
            if s["response"][0]["virtual_account_name"] == target.as_str() {
                done += 1;
            }
        }
        if done == moved.len() {
            break;
        }
        if Instant::now() >= deadline {
            let j = tally.get(&format!("/tiers/jobs/{job}")).await;
            let d = tally.get(&format!("/devices/{}", moved[0])).await;
            panic!(
                "{done} of {} devices show virtual account {target} after 120 s\njob: {j:#}\ninventory device: {d:#}",
                moved.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "transfer visible in {:?}; total {:?}",
        t2.elapsed(),
        t0.elapsed()
    );
}
