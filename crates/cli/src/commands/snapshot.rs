//! `tartarus snapshot`: Nyx's template snapshots — list them (with staleness) or drop one.

use chrono::Utc;

use super::Global;
use crate::client::Client;
use crate::output::{self, Format};

/// Subcommands.
#[derive(clap::Subcommand, Debug)]
#[command(after_help = "Examples:
  tartarus template warm python-ds --command python3 -c 'import pandas'
  tartarus snapshot ls
  tartarus snapshot rm python-ds      # sandboxes of python-ds boot cold again

A snapshot is made by `tartarus template warm`; sandboxes of a template with a usable snapshot
are restored from it instead of booting. A snapshot of older template content (the template
was replaced) or of another runtime version is never used: the next launch rebuilds it.")]
pub enum Command {
    /// List snapshots: template, id, sizes, warm-up command, and whether it is stale.
    Ls {
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Drop a template's snapshot (`tartarus template prune` then frees its artifact).
    Rm {
        /// The template whose snapshot goes.
        template: String,
    },
}

/// Runs the verb.
pub async fn execute(cmd: Command, g: &Global) -> anyhow::Result<i32> {
    let client = Client::new(g)?;
    match cmd {
        Command::Ls { output: Format::Json } => output::print_json(&client.snapshots().await?["snapshots"])?,
        Command::Ls { output: Format::Table } => print!("{}", render(&client.snapshots().await?)),
        Command::Rm { template } => {
            let s = client.remove_snapshot(&template).await?;
            println!("dropped snapshot {} of template {template}; its sandboxes boot cold again", s.id);
        }
    }
    Ok(0)
}

fn render(list: &serde_json::Value) -> String {
    let now = Utc::now();
    let rows: Vec<Vec<String>> = list["snapshots"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let s = &e["snapshot"];
            let at = s["created_at"].as_str().and_then(|t| t.parse().ok()).map_or("-".into(), |t| output::ago(t, now));
            let command = s["warm_command"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|| "-".into());
            vec![
                e["template"].as_str().unwrap_or("?").to_owned(),
                s["id"].as_str().unwrap_or("?").to_owned(),
                output::bytes(s["size_bytes"].as_u64().unwrap_or(0)),
                output::bytes(s["compressed_bytes"].as_u64().unwrap_or(0)),
                at,
                if e["stale"].is_string() { "stale".into() } else { "usable".into() },
                command,
            ]
        })
        .collect();
    output::table(&["TEMPLATE", "SNAPSHOT", "SIZE", "STORED", "CREATED", "STATE", "WARM-UP"], &rows)
}
