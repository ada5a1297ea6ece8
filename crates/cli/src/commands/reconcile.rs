//! `tartarus reconcile`: asks Olympus to rebuild its view from Hades and the agents and repair records.

use super::Global;
use crate::client::Client;
use crate::output;

/// Arguments.
#[derive(clap::Args, Debug)]
#[command(after_help = "Olympus asks every live node which sandboxes it runs and repairs the records:
running ones confirmed, vanished ones recorded as lost, ones on dead nodes lost or queued
again, queued ones the queue lost queued again, and unrecorded ones killed. Olympus does
this by itself at start-up; it is safe to run at any time, as often as you like.

Examples:
  tartarus reconcile")]
pub struct Args {}

/// Runs the verb.
pub async fn execute(_args: Args, g: &Global) -> anyhow::Result<i32> {
    let report = Client::new(g)?.reconcile().await?;
    output::print_json(&report)?;
    Ok(0)
}
