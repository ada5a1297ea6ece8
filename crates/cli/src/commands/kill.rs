//! `tartarus kill` (to be written).

use super::Global;

/// Arguments.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs the verb.
pub async fn execute(_args: Args, _g: &Global) -> anyhow::Result<i32> {
    anyhow::bail!("not yet")
}
