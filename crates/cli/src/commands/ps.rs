//! `tartarus ps`: lists sandboxes, newest first, as a table or JSON.

use chrono::{DateTime, Utc};
use tartarus_core::{SandboxRecord, SandboxState};

use super::Global;
use crate::args;
use crate::client::{Client, ListFilter};
use crate::output::{self, Format};

/// How many characters of the command a table shows.
const COMMAND_WIDTH: usize = 40;

/// Arguments.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  tartarus ps
  tartarus ps --state running
  tartarus ps --state exited,killed --label team=a --limit 10
  tartarus ps --all --output json")]
pub struct Args {
    /// Only sandboxes in these states (comma-separated: queued, starting, running, paused,
    /// exited, killed, failed, lost).
    #[arg(long, value_name = "STATE,...", value_delimiter = ',', value_parser = args::state)]
    pub state: Vec<SandboxState>,
    /// Only sandboxes with this label (repeatable; all must match).
    #[arg(long = "label", short = 'l', value_name = "KEY=VALUE", value_parser = args::key_value)]
    pub labels: Vec<(String, String)>,
    /// Show at most this many, newest first.
    #[arg(long, short = 'n', value_name = "N", default_value_t = 50, conflicts_with = "all")]
    pub limit: u32,
    /// Show every sandbox the realm knows (no limit).
    #[arg(long, short = 'a')]
    pub all: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Runs the verb.
pub async fn execute(args: Args, g: &Global) -> anyhow::Result<i32> {
    let client = Client::new(g)?;
    let filter = ListFilter { states: args.state, labels: args.labels, limit: (!args.all).then_some(args.limit) };
    let sandboxes = client.list(&filter).await?;
    match args.output {
        Format::Json => output::print_json(&sandboxes)?,
        Format::Table => print!("{}", render(&sandboxes, Utc::now())),
    }
    Ok(0)
}

/// The table of `sandboxes`, with creation times relative to `now`.
fn render(sandboxes: &[SandboxRecord], now: DateTime<Utc>) -> String {
    let rows: Vec<Vec<String>> = sandboxes
        .iter()
        .map(|r| {
            let command = match &r.spec.command {
                Some(argv) => output::truncate(&output::shell_join(argv), COMMAND_WIDTH),
                None => "(session)".into(),
            };
            vec![
                r.id.to_string(),
                r.spec.template.to_string(),
                output::state_cell(r),
                r.node.clone().unwrap_or_else(|| "-".into()),
                output::ago(r.created_at, now),
                command,
            ]
        })
        .collect();
    output::table(&["ID", "TEMPLATE", "STATE", "NODE", "CREATED", "COMMAND"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, extra: serde_json::Value) -> SandboxRecord {
        let mut v = serde_json::json!({
            "id": id,
            "spec": {
                "template": "busybox", "command": ["sh", "-c", "echo hello world; sleep 100000000000000"],
                "env": {}, "workdir": "/", "resources": {"vcpus": 1, "memory_mib": 256, "disk_mib": 1024},
                "max_duration_ms": 900000, "idle_timeout_ms": null, "network": "none", "labels": {},
                "tenant": "admin", "heat": "cold"
            },
            "verdict": {"principal": "admin", "rulings": [], "judged_at": "2025-01-01T00:00:00Z"},
            "state": "running",
            "created_at": "2025-01-01T00:00:00Z"
        });
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn table_shows_outcomes() {
        let now: DateTime<Utc> = "2025-01-01T00:00:05Z".parse().unwrap();
        let mut session = record("sb-000000000000000c", serde_json::json!({"state": "failed", "error": "x"}));
        session.spec.command = None;
        let rows = [
            record("sb-000000000000000a", serde_json::json!({"state": "exited", "exit_code": 0, "node": "node-a"})),
            record("sb-000000000000000b", serde_json::json!({"state": "killed", "kill_reason": "out_of_memory"})),
            session,
        ];
        let t = render(&rows, now);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "ID                   TEMPLATE  STATE                  NODE    CREATED  COMMAND");
        assert_eq!(
            lines[1],
            "sb-000000000000000a  busybox   exited (0)             node-a  5s ago   sh -c 'echo hello world; sleep 10000000…"
        );
        assert!(lines[2].contains("killed: out_of_memory"), "{}", lines[2]);
        assert!(lines[3].contains("failed") && lines[3].ends_with("(session)"), "{}", lines[3]);
    }
}
