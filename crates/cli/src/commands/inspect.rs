//! `tartarus inspect`: one sandbox's record, in words or as JSON — its state, where it runs, how
//! it started, its network (address and rules in force), sleep and termination.

use chrono::Utc;
use tartarus_core::{SandboxId, SandboxRecord};

use super::Global;
use crate::args;
use crate::client::Client;
use crate::output::{self, Format};

/// Arguments.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  tartarus inspect sb-0123456789abcdef
  tartarus inspect sb-0123456789abcdef -o json | jq .network")]
pub struct Args {
    /// The sandbox.
    #[arg(value_name = "ID", value_parser = args::sandbox_id)]
    pub id: SandboxId,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Runs the verb.
pub async fn execute(a: Args, g: &Global) -> anyhow::Result<i32> {
    let rec = Client::new(g)?.get(&a.id).await?;
    match a.output {
        Format::Json => output::print_json(&rec)?,
        Format::Table => print!("{}", describe(&rec, Utc::now())),
    }
    Ok(0)
}

/// The record in lines of `key: value`.
fn describe(r: &SandboxRecord, now: chrono::DateTime<Utc>) -> String {
    let mut lines = vec![
        ("id", r.id.to_string()),
        ("state", r.outcome()),
        ("template", r.spec.template.to_string()),
        ("command", r.spec.command.as_ref().map_or("(session)".into(), |c| format!("{c:?}"))),
        ("node", r.node.clone().unwrap_or_else(|| "-".into())),
        ("created", output::ago(r.created_at, now)),
    ];
    if let Some(from) = &r.launched_from {
        lines.push(("launched from", from.clone()));
    }
    match (&r.network, r.spec.network.is_none()) {
        (_, true) => lines.push(("network", "none (loopback only)".into())),
        (Some(n), false) => {
            lines.push(("address", n.address.clone()));
            lines.push(("network mode", n.mode.clone()));
            for rule in &n.rules {
                lines.push(("rule", rule.clone()));
            }
        }
        (None, false) => lines.push(("network", "asked for, not set up (yet)".into())),
    }
    if let Some(s) = &r.sleep {
        lines.push((
            "asleep",
            format!(
                "since {} on {}: {} checkpoint, {} stored",
                output::ago(s.slept_at, now),
                s.node,
                output::bytes(s.memory_bytes),
                output::bytes(s.compressed_bytes)
            ),
        ));
    }
    if let Some(t) = &r.termination {
        lines.push(("termination", format!("{:?}, graceful: {}", t.reason, t.graceful).to_lowercase()));
    }
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    lines.iter().map(|(k, v)| format!("{k:width$}  {v}\n")).collect()
}
