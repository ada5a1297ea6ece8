//! `tartarus kill`: kills sandboxes and says how each ended.

use tartarus_core::{KillReason, SandboxId, SandboxRecord, SandboxState};

use super::Global;
use crate::args;
use crate::client::Client;

/// Arguments.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  tartarus kill sb-0123456789abcdef
  tartarus kill $(tartarus ps --state running -o json | jq -r '.[].id')")]
pub struct Args {
    /// The sandboxes to kill.
    #[arg(value_name = "ID", required = true, value_parser = args::sandbox_id)]
    pub ids: Vec<SandboxId>,
}

/// Runs the verb; exits 1 when any sandbox could not be killed.
pub async fn execute(args: Args, g: &Global) -> anyhow::Result<i32> {
    let client = Client::new(g)?;
    let mut code = 0;
    for id in &args.ids {
        match client.delete(id).await {
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
        (SandboxState::Killed, Some(KillReason::Requested)) => format!("{} killed", rec.id),
        (s, _) if !s.is_terminal() => format!("{} is being killed (still {})", rec.id, s.as_str()),
        _ => format!("{} had already ended: {}", rec.id, rec.outcome()),
    }
}
