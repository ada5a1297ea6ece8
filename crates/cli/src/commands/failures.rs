//! `tartarus failures`: Cocytus — launch errors, lost sandboxes, enforcement kills, retries.

use chrono::Utc;
use tartarus_core::{Failure, SandboxId};

use super::Global;
use crate::args;
use crate::client::Client;
use crate::output::{self, Format};

/// Arguments.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  tartarus failures
  tartarus failures --node node-b --since 10m
  tartarus failures --sandbox sb-0123456789abcdef --output json

Kinds: failed (could not start or run), lost (vanished with its node or agent),
killed (timeout, out_of_memory, disk_limit), retry (a placement tried again).")]
pub struct Args {
    /// Only failures of the last DURATION (e.g. 10m, 2h).
    #[arg(long, value_name = "DURATION", value_parser = args::duration)]
    pub since: Option<tartarus_core::HumanDuration>,
    /// Only this node's.
    #[arg(long)]
    pub node: Option<String>,
    /// Only this sandbox's.
    #[arg(long, value_parser = args::sandbox_id)]
    pub sandbox: Option<SandboxId>,
    /// Show at most this many, newest first.
    #[arg(long, short = 'n', default_value_t = 50)]
    pub limit: u32,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Runs the verb.
pub async fn execute(args: Args, g: &Global) -> anyhow::Result<i32> {
    let client = Client::new(g)?;
    let mut query = vec![("limit", args.limit.to_string())];
    if let Some(d) = args.since {
        let since = Utc::now() - chrono::Duration::from_std(d.0).unwrap_or(chrono::Duration::MAX);
        query.push(("since", since.to_rfc3339()));
    }
    if let Some(n) = args.node {
        query.push(("node", n));
    }
    if let Some(s) = args.sandbox {
        query.push(("sandbox", s.to_string()));
    }
    let failures = client.failures(&query).await?;
    match args.output {
        Format::Json => output::print_json(&failures)?,
        Format::Table => print!("{}", render(&failures)),
    }
    Ok(0)
}

fn render(failures: &[Failure]) -> String {
    let now = Utc::now();
    let rows: Vec<Vec<String>> = failures
        .iter()
        .map(|f| {
            vec![
                output::ago(f.at, now),
                f.sandbox.to_string(),
                f.node.clone().unwrap_or_else(|| "-".into()),
                f.kind.clone(),
                f.reason.clone(),
            ]
        })
        .collect();
    output::table(&["WHEN", "SANDBOX", "NODE", "KIND", "REASON"], &rows)
}
