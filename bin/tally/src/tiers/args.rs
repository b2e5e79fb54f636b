//! The command line of `tally tiers`, and turning its selection and target into a job request.

use super::{Res, invalid};
use clap::{Args, Subcommand, ValueEnum};
use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use tally_tier_assignment::plan::{Mode, PlanRequest, Selector, Target};
use uuid::Uuid;

/// Server-side maximum page: the CLI lists everything unless told otherwise.
pub(super) const ALL: i64 = 1_000_000;

#[derive(Args)]
pub struct TiersArgs {
    /// Tally's base URL.
    #[arg(
        long,
        env = "TALLY_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub(super) url: String,
    /// Bearer token (GET needs viewer, changes operator, rules admin).
    #[arg(long, env = "TALLY_TOKEN", hide_env_values = true, global = true)]
    pub(super) token: Option<String>,
    #[command(subcommand)]
    pub(super) command: TiersCommand,
}

#[derive(Subcommand)]
pub(super) enum TiersCommand {
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
pub(super) enum RulesCommand {
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
pub(super) struct SelectArgs {
    /// A device id (repeatable).
    #[arg(long = "device-id", value_name = "UUID")]
    pub(super) device_ids: Vec<Uuid>,
    /// A CSV file with a `device_id` (or `id`) column, such as `tally tiers items --csv` and
    /// `tally tiers devices --csv` write; `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    pub(super) devices_csv: Option<PathBuf>,
    /// Devices at this site.
    #[arg(long)]
    pub(super) site: Option<String>,
    /// Devices in this inventory group.
    #[arg(long)]
    pub(super) group: Option<String>,
    /// Exact model or a prefix ending in `*` (`C9300-*`; `*` selects every device).
    #[arg(long)]
    pub(super) model: Option<String>,
    /// Exact hostname or a prefix ending in `*`.
    #[arg(long)]
    pub(super) hostname: Option<String>,
    /// Devices whose DNA tier is this now (`none`: no add-on).
    #[arg(long, value_name = "TIER")]
    pub(super) current_dna_tier: Option<String>,
    /// Devices whose network license is this now.
    #[arg(long, value_name = "LICENSE")]
    pub(super) current_network_license: Option<String>,
    /// Devices in this virtual account now.
    #[arg(long, value_name = "VA")]
    pub(super) current_virtual_account: Option<String>,
}

#[derive(Args)]
pub(super) struct TargetArgs {
    /// network-essentials or network-advantage.
    #[arg(long, value_name = "LICENSE")]
    pub(super) network_license: Option<String>,
    /// dna-essentials, dna-advantage, dna-premier, or `none` to remove the add-on.
    #[arg(long, value_name = "TIER")]
    pub(super) dna_tier: Option<String>,
    /// Move the devices (and the licenses they hold) to this virtual account.
    #[arg(long, value_name = "VA")]
    pub(super) virtual_account: Option<String>,
    /// Draw this DNA license (as CSSM names it) instead of the first that fits the model.
    #[arg(long, value_name = "NAME")]
    pub(super) dna_license: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
pub(super) enum ModeArg {
    /// Refused unless every selected device passes the rules and fits the pools; a device
    /// that fails to configure rolls the whole job back.
    AllOrNothing,
    /// Devices that pass go ahead; the others are reported.
    BestEffort,
}

#[derive(Args)]
pub(super) struct RequestArgs {
    #[command(flatten)]
    pub(super) select: SelectArgs,
    #[command(flatten)]
    pub(super) target: TargetArgs,
    #[arg(long, value_enum, default_value = "all-or-nothing")]
    pub(super) mode: ModeArg,
    /// How many violations to list.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub(super) violations: usize,
}

#[derive(Args)]
pub(super) struct PlanCmd {
    #[command(flatten)]
    pub(super) req: RequestArgs,
    /// Print the plan as JSON.
    #[arg(long, conflicts_with = "csv")]
    pub(super) json: bool,
    /// Write the changes as CSV.
    #[arg(long)]
    pub(super) csv: bool,
}

#[derive(Args)]
pub(super) struct ApplyCmd {
    #[command(flatten)]
    pub(super) req: RequestArgs,
    /// Makes a retry return the same job instead of starting another (default: a new UUID,
    /// printed so a retry can pass it).
    #[arg(long, value_name = "KEY")]
    pub(super) idempotency_key: Option<String>,
    /// Refuse the job unless it does exactly what the dry-run with this fingerprint showed.
    #[arg(long, value_name = "FINGERPRINT")]
    pub(super) expect_fingerprint: Option<String>,
    /// Do not ask for confirmation.
    #[arg(long, short)]
    pub(super) yes: bool,
    /// Follow the job until it ends (exit 1 unless it is done).
    #[arg(long)]
    pub(super) wait: bool,
    /// Print the job (with --wait: the finished job) as JSON.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args)]
pub(super) struct DevicesCmd {
    #[arg(long)]
    pub(super) site: Option<String>,
    #[arg(long)]
    pub(super) group: Option<String>,
    /// Exact model or a prefix ending in `*`.
    #[arg(long)]
    pub(super) model: Option<String>,
    /// A DNA tier, or `none`.
    #[arg(long)]
    pub(super) dna_tier: Option<String>,
    /// active, applying or pending_reload.
    #[arg(long)]
    pub(super) state: Option<String>,
    #[arg(long, default_value_t = ALL)]
    pub(super) limit: i64,
    #[arg(long, conflicts_with = "json")]
    pub(super) csv: bool,
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args)]
pub(super) struct HistoryCmd {
    #[arg(long)]
    pub(super) device_id: Option<Uuid>,
    /// tier, virtual_account or ack.
    #[arg(long)]
    pub(super) kind: Option<String>,
    #[arg(long)]
    pub(super) job_id: Option<Uuid>,
    /// RFC 3339 time, inclusive.
    #[arg(long)]
    pub(super) since: Option<String>,
    /// RFC 3339 time, exclusive.
    #[arg(long)]
    pub(super) until: Option<String>,
    /// Entries after this id (to page).
    #[arg(long)]
    pub(super) after: Option<i64>,
    #[arg(long, default_value_t = ALL)]
    pub(super) limit: i64,
    #[arg(long, conflicts_with = "json")]
    pub(super) csv: bool,
    #[arg(long)]
    pub(super) json: bool,
}

pub(super) fn read_input(path: &Path) -> Res<Vec<u8>> {
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

pub(super) fn request(a: &RequestArgs) -> Res<PlanRequest> {
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
}
