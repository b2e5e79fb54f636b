//! `tally uplink accounts ...`: the account directory through the REST API
//! (`/api/v1/uplink/accounts`). Exit codes as `tally tiers`: 0 success, 2 refused or invalid,
//! 1 anything else.

use crate::tiers::{Doing, Res, connect, finish};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

#[derive(Args)]
pub struct UplinkArgs {
    /// Tally's base URL.
    #[arg(
        long,
        env = "TALLY_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// Bearer token (listing needs viewer, changes operator).
    #[arg(long, env = "TALLY_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: UplinkCommand,
}

#[derive(Subcommand)]
enum UplinkCommand {
    /// The account directory: smart/virtual account names and the CSSM ids they are sent as.
    #[command(subcommand)]
    Accounts(AccountsCommand),
}

#[derive(Subcommand)]
enum AccountsCommand {
    /// Every entry, the last refresh, and the pairs CSSM does not know.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Give the CSSM ids of a pair by hand (air-gapped sites); they win over CSSM's listing.
    Set {
        /// The smart account as the inventory names it.
        #[arg(long)]
        smart_account: String,
        /// The virtual account as the inventory names it.
        #[arg(long)]
        virtual_account: String,
        #[arg(long)]
        smart_account_id: String,
        #[arg(long)]
        virtual_account_id: String,
    },
    /// Forget the ids given by hand for a pair.
    Forget {
        #[arg(long)]
        smart_account: String,
        #[arg(long)]
        virtual_account: String,
    },
    /// Ask CSSM for the accounts now (online mode).
    Refresh,
}

pub async fn run(args: UplinkArgs) -> anyhow::Result<()> {
    finish(dispatch(args).await)
}

async fn dispatch(args: UplinkArgs) -> Res<()> {
    let api = connect(&args.url, args.token)?;
    let UplinkCommand::Accounts(cmd) = args.command;
    match cmd {
        AccountsCommand::List { json } => {
            let d: Value = api
                .uplink_accounts()
                .await
                .doing("list the account directory")?;
            if json {
                println!("{d:#}");
            } else {
                print!("{}", render_directory(&d));
            }
        }
        AccountsCommand::Set {
            smart_account,
            virtual_account,
            smart_account_id,
            virtual_account_id,
        } => {
            let r: Value = api
                .set_uplink_account(&json!({
                    "smart_account": smart_account,
                    "virtual_account": virtual_account,
                    "smart_account_id": smart_account_id,
                    "virtual_account_id": virtual_account_id,
                }))
                .await
                .doing("set the account ids")?;
            println!(
                "{smart_account} / {virtual_account} -> {smart_account_id} / {virtual_account_id}; {} reports go again",
                r["requeued_reports"]
            );
        }
        AccountsCommand::Forget {
            smart_account,
            virtual_account,
        } => {
            api.forget_uplink_account(&smart_account, &virtual_account)
                .await
                .doing("forget the account ids")?;
            println!("forgot the ids given for {smart_account} / {virtual_account}");
        }
        AccountsCommand::Refresh => {
            let r: Value = api
                .refresh_uplink_accounts()
                .await
                .doing("refresh the account directory")?;
            println!(
                "CSSM lists {} smart accounts, {} virtual accounts; {} reports go again",
                r["smart_accounts"], r["virtual_accounts"], r["requeued_reports"]
            );
        }
    }
    Ok(())
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

/// The directory as a table, then the last refresh and the unknown pairs.
fn render_directory(d: &Value) -> String {
    let mut out = String::new();
    let rows: Vec<[String; 5]> = d["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            [
                text(&e["source"]),
                text(&e["smart_account"]),
                text(&e["virtual_account"]),
                text(&e["smart_account_id"]),
                text(&e["virtual_account_id"]),
            ]
        })
        .collect();
    let head = [
        "SOURCE",
        "SMART ACCOUNT",
        "VIRTUAL ACCOUNT",
        "SA ID",
        "VA ID",
    ];
    let mut w = head.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    for r in std::iter::once(head.map(str::to_owned)).chain(rows) {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    match (&d["refreshed_at"], &d["refresh_error"]) {
        (Value::Null, _) => out.push_str("never refreshed from CSSM\n"),
        (at, Value::Null) => out.push_str(&format!("refreshed from CSSM at {}\n", text(at))),
        (at, err) => out.push_str(&format!(
            "the last refresh, at {}, failed: {}\n",
            text(at),
            text(err)
        )),
    }
    for u in d["unresolved"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "unknown to CSSM: {} / {} ({} batches waiting): {}\n",
            text(&u["smart_account"]),
            text(&u["virtual_account"]),
            u["batches_waiting"],
            text(&u["reason"])
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_renders_as_a_table_with_its_unknown_pairs() {
        let d = json!({
            "refreshed_at": "2026-12-04T10:00:00Z", "refresh_error": null,
            "entries": [{"source": "cssm", "smart_account": "acme.example", "virtual_account": "Campus", "smart_account_id": "1001", "virtual_account_id": "2001"}],
            "unresolved": [{"smart_account": "acme.example", "virtual_account": "Voice", "batches_waiting": 2, "reason": "no such virtual account"}],
        });
        let t = render_directory(&d);
        assert!(t.starts_with("SOURCE  SMART ACCOUNT  VIRTUAL ACCOUNT  SA ID  VA ID\ncssm    acme.example   Campus           1001   2001\n"), "{t}");
        assert!(t.contains("refreshed from CSSM at 2026-12-04T10:00:00Z"));
        assert!(t.contains(
            "unknown to CSSM: acme.example / Voice (2 batches waiting): no such virtual account"
        ));
    }
}
