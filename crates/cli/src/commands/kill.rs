//! `tartarus kill`: kills sandboxes and says how each ended.

use tartarus_core::{KillReason, SandboxId, SandboxRecord, SandboxState};

use super::Global;
use crate::args;
use crate::client::Client;

/// Arguments.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  tartarus kill sb-0123456789abcdef
  tartarus kill --grace 10s sb-0123456789abcdef          # SIGTERM, then SIGKILL after 10 s
  tartarus kill --grace 30s --signal INT sb-0123456789abcdef
  tartarus kill $(tartarus ps --state running -o json | jq -r '.[].id')

Without --grace the sandbox is SIGKILLed at once. With it, Thanatos sends the signal (SIGTERM
unless --signal says otherwise) to the main process and waits up to the grace period for the
sandbox to end by itself; the record's `termination` lists the phases and says whether it
ended gracefully.")]
pub struct Args {
    /// The sandboxes to kill.
    #[arg(value_name = "ID", required = true, value_parser = args::sandbox_id)]
    pub ids: Vec<SandboxId>,
    /// Give each this long (e.g. 10s) to end after the signal before SIGKILL.
    #[arg(long, value_name = "DURATION", value_parser = args::duration)]
    pub grace: Option<tartarus_core::HumanDuration>,
    /// The signal sent first: TERM (default with --grace), INT, HUP, QUIT, USR1, USR2, KILL.
    #[arg(long, value_name = "SIGNAL")]
    pub signal: Option<String>,
}

/// Runs the verb; exits 1 when any sandbox could not be killed.
pub async fn execute(args: Args, g: &Global) -> anyhow::Result<i32> {
    let client = Client::new(g)?;
    let mut query = Vec::new();
    if let Some(grace) = args.grace {
        query.push(("grace", humantime::format_duration(grace.0).to_string()));
    }
    if let Some(s) = &args.signal {
        query.push(("signal", s.clone()));
    }
    let mut code = 0;
    for id in &args.ids {
        match client.delete_with(id, &query).await {
            Ok(rec) => println!("{}", describe(&rec)),
            Err(e) => {
                eprintln!("tartarus: cannot kill {id}: {e:#}");
                code = 1;
            }
        }
    }
    Ok(code)
}

/// `ID killed`, or how it had ended already.
fn describe(rec: &SandboxRecord) -> String {
    match (rec.state, rec.kill_reason) {
        (SandboxState::Killed, Some(KillReason::Requested)) => match &rec.termination {
            Some(t) if t.grace_ms > 0 && t.graceful => format!("{} ended within its grace period", rec.id),
            Some(t) if t.grace_ms > 0 => format!("{} killed after its grace period", rec.id),
            _ => format!("{} killed", rec.id),
        },
        (s, _) if !s.is_terminal() => format!("{} is being killed (still {})", rec.id, s.as_str()),
        _ => format!("{} had already ended: {}", rec.id, rec.outcome()),
    }
}
