//! `tartarus sleep`, `tartarus wake` and `tartarus sleeping`: Hypnos's sleep and wake of sandboxes.

use chrono::Utc;
use tartarus_core::SandboxId;

use super::Global;
use crate::args;
use crate::client::Client;
use crate::output::{self, Format};

/// Arguments of `sleep`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  tartarus sleep sb-0123456789abcdef
  tartarus sleeping                        # what sleeps, how big, since when
  tartarus wake sb-0123456789abcdef

Hypnos pauses the sandbox, checkpoints it, stores the checkpoint compressed (zstd) in the
realm's blob store and releases its node. Its processes and files are kept in the checkpoint;
`tartarus wake` restores them where they were, on any node of its runtime. Time asleep does not
count against max_duration; a sandbox asleep longer than its max_sleep (default 24h) is ended.
Only sandboxes that booted (launched_from: cold) can sleep, and processes started with
`tartarus exec` do not survive a wake here (the runsc in use restores them as zombies).
Hypnos is off by default: the realm must run with ENABLE_HYPNOS=1.")]
pub struct SleepArgs {
    /// The sandboxes to put to sleep.
    #[arg(value_name = "ID", required = true, value_parser = args::sandbox_id)]
    pub ids: Vec<SandboxId>,
}

/// Arguments of `wake`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  tartarus wake sb-0123456789abcdef
  tartarus wake --no-wait sb-0123456789abcdef   # queued for placement; returns at once

The sandbox is placed like a new one (any node of its runtime with room) and restored there
from its checkpoint; its output goes on in the same logs (`tartarus logs`).")]
pub struct WakeArgs {
    /// The sandboxes to wake.
    #[arg(value_name = "ID", required = true, value_parser = args::sandbox_id)]
    pub ids: Vec<SandboxId>,
    /// Return once it is queued instead of once it runs again.
    #[arg(long)]
    pub no_wait: bool,
}

/// Arguments of `sleeping`.
#[derive(clap::Args, Debug)]
pub struct SleepingArgs {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Puts sandboxes to sleep; exits 1 when any could not sleep.
pub async fn sleep(a: SleepArgs, g: &Global) -> anyhow::Result<i32> {
    let client = Client::new(g)?;
    let mut code = 0;
    for id in &a.ids {
        match client.sleep(id).await {
            Ok(rec) => match &rec.sleep {
                Some(s) => println!(
                    "{id} asleep: {} checkpoint stored as {} in {:.1} s",
                    output::bytes(s.memory_bytes),
                    output::bytes(s.compressed_bytes),
                    s.took_ms as f64 / 1000.0
                ),
                None => println!("{id} is {}", rec.state.as_str()),
            },
            Err(e) => {
                eprintln!("tartarus: cannot put {id} to sleep: {e:#}");
                code = 1;
            }
        }
    }
    Ok(code)
}

/// Wakes sandboxes; exits 1 when any could not be woken.
pub async fn wake(a: WakeArgs, g: &Global) -> anyhow::Result<i32> {
    let client = Client::new(g)?;
    let mut code = 0;
    for id in &a.ids {
        match client.wake(id, !a.no_wait).await {
            Ok(rec) if a.no_wait => println!("{id} is {}: it wakes once placed", rec.state.as_str()),
            Ok(rec) if rec.state.is_terminal() => {
                eprintln!("tartarus: {id} did not wake: {}", rec.outcome());
                code = 1;
            }
            Ok(rec) => println!("{id} awake on {} ({})", rec.node.as_deref().unwrap_or("?"), rec.state.as_str()),
            Err(e) => {
                eprintln!("tartarus: cannot wake {id}: {e:#}");
                code = 1;
            }
        }
    }
    Ok(code)
}

/// Lists sleeping sandboxes.
pub async fn sleeping(a: SleepingArgs, g: &Global) -> anyhow::Result<i32> {
    let list = Client::new(g)?.sleeping().await?;
    let sleepers = list["sleeping"].as_array().cloned().unwrap_or_default();
    match a.output {
        Format::Json => output::print_json(&sleepers)?,
        Format::Table => {
            let now = Utc::now();
            let rows: Vec<Vec<String>> = sleepers
                .iter()
                .map(|s| {
                    let at = |k: &str| s[k].as_str().or(s["sleep"][k].as_str()).and_then(|t| t.parse().ok());
                    vec![
                        s["id"].as_str().unwrap_or("?").to_owned(),
                        s["template"].as_str().unwrap_or("?").to_owned(),
                        output::bytes(s["sleep"]["memory_bytes"].as_u64().unwrap_or(0)),
                        output::bytes(s["sleep"]["compressed_bytes"].as_u64().unwrap_or(0)),
                        at("slept_at").map_or("?".into(), |t| output::ago(t, now)),
                        s["sleep"]["node"].as_str().unwrap_or("?").to_owned(),
                        at("ends_at")
                            .map_or("?".into(), |t: chrono::DateTime<Utc>| t.format("%Y-%m-%d %H:%M").to_string()),
                    ]
                })
                .collect();
            print!("{}", output::table(&["ID", "TEMPLATE", "MEMORY", "STORED", "SLEPT", "NODE", "ENDS"], &rows));
        }
    }
    Ok(0)
}
