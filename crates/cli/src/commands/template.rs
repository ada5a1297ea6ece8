//! `tartarus template` (to be written).

use super::Global;

/// Subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Placeholder.
    Todo,
}

/// Runs the verb.
pub async fn execute(_c: Command, _g: &Global) -> anyhow::Result<i32> {
    anyhow::bail!("not yet")
}
