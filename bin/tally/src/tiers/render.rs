//! How `tally tiers` prints: tables, plans, progress, and stdout that a closed pipe ends quietly.

use super::{Res, failed};
use std::collections::BTreeMap;
use std::io::Write;
use tally_tier_assignment::jobs::Job;
use tally_tier_assignment::plan::{Levels, Plan};
use tally_tier_assignment::pools::PoolView;

/// Writes to stdout; a closed pipe (`| head`) ends the output quietly.
pub(super) fn say(text: impl AsRef<str>) {
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
pub(super) fn note(json: bool, text: impl AsRef<str>) {
    if json {
        eprintln!("{}", text.as_ref());
    } else {
        say(text);
    }
}

pub(super) fn print_json<T: serde::Serialize>(v: &T) -> Res<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| failed(format!("error: {e}")))?;
    say(s);
    Ok(())
}

/// Server CSV as it comes (it already ends with a newline).
pub(super) fn print_raw(text: &str) {
    say(text.strip_suffix('\n').unwrap_or(text));
}

/// Left-aligned columns, two spaces apart.
pub(super) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
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

pub(super) fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

pub(super) fn level(network: &str, dna: Option<&str>) -> String {
    format!("{network} + {}", dna.unwrap_or("no DNA"))
}

fn levels(l: &Levels) -> String {
    format!(
        "{} @ {}",
        level(&l.network_license, l.dna_tier.as_deref()),
        l.virtual_account
    )
}

pub(super) fn plan_summary(p: &Plan, max_violations: usize) -> String {
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

pub(super) fn plan_csv(p: &Plan) -> Res<String> {
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

pub(super) fn pools_table(pools: &[PoolView]) -> String {
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

/// Devices the job is finished with (rejected ones never start).
pub(super) fn progressed(j: &Job) -> u64 {
    u64::try_from(j.applied + j.failed + j.cancelled + j.rejected).unwrap_or(0)
}

/// The bar's message: the state and the counters that are not zero, short enough for 80 columns.
pub(super) fn progress_message(j: &Job) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["A", "BB"],
            &[vec!["long".into(), "x".into()], vec!["s".into(), "".into()]],
        );
        assert_eq!(t, "A     BB\nlong  x\ns");
    }
}
