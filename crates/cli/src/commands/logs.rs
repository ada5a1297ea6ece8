//! `tartarus logs`: prints a sandbox's output, or follows it until the sandbox ends.

use anyhow::Context;
use tartarus_core::SandboxId;

use super::Global;
use crate::args;
use crate::client::Client;
use crate::output;

/// Arguments.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  tartarus logs sb-0123456789abcdef
  tartarus logs -f sb-0123456789abcdef    # until the sandbox ends")]
pub struct Args {
    /// Keep printing new output until the sandbox ends.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// The sandbox.
    #[arg(value_name = "ID", value_parser = args::sandbox_id)]
    pub id: SandboxId,
}

/// Runs the verb.
pub async fn execute(args: Args, g: &Global) -> anyhow::Result<i32> {
    let client = Client::new(g)?;
    let mut stream =
        client.logs(&args.id, args.follow).await.with_context(|| format!("cannot read the logs of {}", args.id))?;
    output::pump(&mut stream).await.with_context(|| format!("reading the logs of {}", args.id))?;
    Ok(0)
}
