//! `tartarus exec`: runs a further command in a running sandbox and exits with its code.

use anyhow::Context;
use tartarus_core::{ExecRequest, ExitInfo, HumanDuration, KillReason, SandboxId, SandboxState};

use super::Global;
use crate::args;
use crate::client::Client;
use crate::output;

/// Arguments.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  id=$(tartarus run --template busybox)     # a session sandbox
  tartarus exec $id -- ls /
  tartarus exec $id --env A=1 --workdir /tmp --timeout 10s -- sh -c 'echo $A > a; cat a'

Exit codes: the command's own; 126 when it could not be run, 137 when it was killed.")]
pub struct Args {
    /// The sandbox (running).
    #[arg(value_name = "ID", value_parser = args::sandbox_id)]
    pub id: SandboxId,
    /// Extra environment variable (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = args::key_value)]
    pub env: Vec<(String, String)>,
    /// Working directory (absolute; default the sandbox's).
    #[arg(long, short = 'w', value_name = "DIR")]
    pub workdir: Option<String>,
    /// Kill the command after this long, e.g. 30s (default the sandbox's own limit).
    #[arg(long, value_name = "DURATION", value_parser = args::duration)]
    pub timeout: Option<HumanDuration>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Runs the verb.
pub async fn execute(args: Args, g: &Global) -> anyhow::Result<i32> {
    let client = Client::new(g)?;
    let req = ExecRequest {
        command: args.command,
        env: args::to_map(args.env),
        workdir: args.workdir,
        timeout: args.timeout,
    };
    let id = args.id;
    let mut stream = client.exec(&id, &req).await.with_context(|| format!("cannot exec in sandbox {id}"))?;
    let exit = output::pump(&mut stream).await.with_context(|| format!("exec in sandbox {id}"))?;
    let exit = exit.with_context(|| format!("the exec stream of sandbox {id} ended without the command's exit"))?;
    let (code, message) = exit_status(&exit);
    if let Some(m) = message {
        eprintln!("{m}");
    }
    Ok(code)
}

/// The exit code for how the command ended, and what to tell the user when it did not exit
/// by itself.
fn exit_status(exit: &ExitInfo) -> (i32, Option<String>) {
    match exit.state {
        SandboxState::Exited => match exit.exit_code {
            Some(code) => (code, None),
            None => (126, Some("tartarus: the command ended without an exit code".into())),
        },
        SandboxState::Killed => {
            let why = exit.kill_reason.map_or("killed", |r| match r {
                KillReason::Timeout => "ran past its --timeout",
                other => other.describe(),
            });
            (137, Some(format!("tartarus: the command was killed: {why}")))
        }
        _ => {
            let error = exit.error.as_deref().unwrap_or("unknown error");
            (126, Some(format!("tartarus: the command could not be run: {error}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        let e = |state, exit_code, kill_reason, error: Option<&str>| ExitInfo {
            state,
            exit_code,
            kill_reason,
            error: error.map(String::from),
        };
        assert_eq!(exit_status(&e(SandboxState::Exited, Some(2), None, None)), (2, None));
        let (code, msg) = exit_status(&e(SandboxState::Killed, None, Some(KillReason::Timeout), None));
        assert_eq!((code, msg.unwrap().as_str()), (137, "tartarus: the command was killed: ran past its --timeout"));
        let (code, msg) = exit_status(&e(SandboxState::Failed, None, None, Some("no such file")));
        assert_eq!((code, msg.unwrap().as_str()), (126, "tartarus: the command could not be run: no such file"));
    }
}
