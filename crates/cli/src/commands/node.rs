//! `tartarus node`: the nodes of the realm (Hades) — list them, drain one, or undrain it.

use chrono::Utc;

use super::Global;
use crate::client::{Client, NodeView};
use crate::output::{self, Format};

/// Subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// List nodes with their state (alive, draining, dead), load and labels.
    #[command(after_help = "Examples:\n  tartarus node ls\n  tartarus node ls --output json")]
    Ls {
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Stop new placements on a node; its running sandboxes keep running, or with --evict end.
    #[command(
        after_help = "Examples:\n  tartarus node drain node-b\n  tartarus node drain node-b --evict --grace 60s   # and end what runs there\n  tartarus node undrain node-b   # take it back\n\nWith --evict, every sandbox running on the node gets SIGTERM and up to --grace to end,\nthen SIGKILL (Thanatos); their records say `termination.reason: node_drain`."
    )]
    Drain {
        /// The node's id, as `tartarus node ls` shows it.
        name: String,
        /// Also end the sandboxes running there (SIGTERM, the grace, then SIGKILL).
        #[arg(long)]
        evict: bool,
        /// With --evict: how long each sandbox has to end after SIGTERM.
        #[arg(long, value_name = "DURATION", value_parser = crate::args::duration, default_value = "30s", requires = "evict")]
        grace: tartarus_core::HumanDuration,
    },
    /// Allow placements on a drained node again.
    Undrain {
        /// The node's id.
        name: String,
    },
}

/// Runs the verb.
pub async fn execute(cmd: Command, g: &Global) -> anyhow::Result<i32> {
    let client = Client::new(g)?;
    match cmd {
        Command::Ls { output: Format::Json } => output::print_json(&client.nodes().await?)?,
        Command::Ls { output: Format::Table } => print!("{}", render(&client.nodes().await?)),
        Command::Drain { name, evict: false, .. } => {
            let n = client.drain(&name, true).await?;
            println!(
                "node {} is {}: no new sandboxes go there ({} still running)",
                n.info.name,
                n.state.as_str(),
                n.info.used.slots
            );
        }
        Command::Drain { name, evict: true, grace } => {
            let query = [("evict", "true".to_owned()), ("grace", humantime::format_duration(grace.0).to_string())];
            let n = client.drain_with(&name, true, &query).await?;
            println!(
                "node {} is {}: no new sandboxes go there; {} asked to end within {}",
                n.info.name,
                n.state.as_str(),
                n.evicted.len(),
                humantime::format_duration(grace.0)
            );
            for id in &n.evicted {
                println!("  {id}");
            }
        }
        Command::Undrain { name } => {
            let n = client.drain(&name, false).await?;
            println!("node {} is {}: it takes new sandboxes again", n.info.name, n.state.as_str());
        }
    }
    Ok(0)
}

/// The table of nodes.
fn render(nodes: &[NodeView]) -> String {
    let now = Utc::now();
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let (c, u) = (n.info.capacity, n.info.used);
            let labels: Vec<String> = n.info.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                n.info.name.clone(),
                n.state.as_str().into(),
                format!("{}/{}", u.slots, c.slots),
                format!("{}/{}", u.vcpus, c.vcpus),
                format!("{}/{} MiB", u.memory_mib, c.memory_mib),
                format!("{:.0}%", n.load * 100.0),
                output::ago(n.info.heartbeat_at, now),
                n.info.address.clone().unwrap_or_else(|| "(in process)".into()),
                if labels.is_empty() { "-".into() } else { labels.join(",") },
            ]
        })
        .collect();
    output::table(&["NODE", "STATE", "SANDBOXES", "VCPUS", "MEMORY", "LOAD", "HEARTBEAT", "ADDRESS", "LABELS"], &rows)
}
