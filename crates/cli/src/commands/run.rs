//! `tartarus run`: creates a sandbox, streams its output and exits with its exit code.

use anyhow::Context;
use tartarus_core::{ExitInfo, HumanDuration, KillReason, Resources, SandboxId, SandboxState, SoulRequest};

use super::Global;
use crate::args;
use crate::client::Client;
use crate::output;

/// Arguments.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  tartarus run --template busybox -- echo hello
  tartarus run --template busybox --memory 512 --timeout 1m -- sh -c 'sleep 5; echo done'
  tartarus run --template busybox --env GREETING=hi -- sh -c 'echo $GREETING'
  tartarus run --template busybox --detach -- sleep 60    # prints the id
  tartarus run --template busybox --node-selector zone=a -- echo on a zone-a node
  tartarus run --template busybox                         # a session: prints its id once it
                                                          # runs, for `tartarus exec ID -- CMD`
  tartarus run --template busybox --allow-egress 10.1.2.3:443 -- wget -qO- https://10.1.2.3/
  tartarus run --template python --allow-host pypi.org:443 --allow-egress 1.1.1.1:53/udp -- pip download x
  tartarus run --template python --expose 8000 --detach -- python3 -m http.server 8000
  curl -H \"Authorization: Bearer $TOKEN\" $TARTARUS_API/v1/sandboxes/ID/ports/8000/

Network: none by default (loopback only). Each --allow-* opens one destination; the node's own
addresses, the metadata address 169.254.169.254 and other sandboxes stay unreachable whatever
is allowed. The record's `network` says the sandbox's address and the rules in force.

Exit codes: the command's own; 124 when it ran past --timeout, 137 when killed otherwise,
125 when the sandbox failed, 130 when interrupted and 141 when the output pipe closed (the
sandbox is killed in both cases).")]
pub struct Args {
    /// Template (root filesystem) to start from; see `tartarus template ls`.
    #[arg(long, short = 't', value_name = "TEMPLATE")]
    pub template: String,
    /// Memory limit in MiB (default 256).
    #[arg(long, value_name = "MiB")]
    pub memory: Option<u64>,
    /// CPU limit in whole cores (default 1).
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u32>,
    /// Writable layer size in MiB (default 1024).
    #[arg(long, value_name = "MiB")]
    pub disk: Option<u64>,
    /// Kill the sandbox after this long, e.g. 30s, 5m (default 15m).
    #[arg(long, value_name = "DURATION", value_parser = args::duration)]
    pub timeout: Option<HumanDuration>,
    /// Environment variable for the command (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = args::key_value)]
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox (absolute; default /).
    #[arg(long, short = 'w', value_name = "DIR")]
    pub workdir: Option<String>,
    /// Label to attach, for `ps --label` (repeatable).
    #[arg(long = "label", short = 'l', value_name = "KEY=VALUE", value_parser = args::key_value)]
    pub labels: Vec<(String, String)>,
    /// Run only on a node carrying this label (repeatable; all must match), e.g. zone=a.
    #[arg(long = "node-selector", value_name = "KEY=VALUE", value_parser = args::key_value)]
    pub node_selector: Vec<(String, String)>,
    /// Print the sandbox's id and return at once instead of streaming its output.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Let the sandbox reach CIDR (e.g. 10.0.0.0/8, 1.2.3.4:443, 8.8.8.8:53/udp); repeatable.
    /// Without any --allow-* flag the sandbox has no network at all.
    #[arg(long = "allow-egress", value_name = "CIDR[:PORT[/tcp|udp]]", value_parser = tartarus_core::network::EgressRule::parse_cli)]
    pub allow_egress: Vec<tartarus_core::network::EgressRule>,
    /// Let the sandbox reach a host name's addresses, resolved by the node at launch (e.g.
    /// pypi.org:443); repeatable.
    #[arg(long = "allow-host", value_name = "NAME[:PORT]", value_parser = |s: &str| tartarus_core::network::AllowedHost::try_from(s.to_owned()))]
    pub allow_host: Vec<tartarus_core::network::AllowedHost>,
    /// Serve PORT (TCP) through the realm's API: /v1/sandboxes/ID/ports/PORT/…; repeatable.
    #[arg(long = "expose", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub expose: Vec<u16>,
    /// Sessions only, with Hypnos on (ENABLE_HYPNOS=1): sleep after this long without an exec
    /// instead of ending at the idle timeout (`tartarus wake` restores it).
    #[arg(long, value_name = "DURATION", value_parser = args::duration)]
    pub sleep_after: Option<HumanDuration>,
    /// With Hypnos: how long it may sleep before it is ended (default 24h).
    #[arg(long, value_name = "DURATION", value_parser = args::duration)]
    pub max_sleep: Option<HumanDuration>,
    /// The command and its arguments, after `--`. Without one, the sandbox is a session that
    /// stays up for `tartarus exec`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl Args {
    /// The soul this invocation asks for.
    fn soul(&self) -> SoulRequest {
        let d = Resources::default();
        SoulRequest {
            template: self.template.clone(),
            command: (!self.command.is_empty()).then(|| self.command.clone()),
            env: args::to_map(self.env.clone()),
            workdir: self.workdir.clone(),
            resources: Resources {
                vcpus: self.vcpus.unwrap_or(d.vcpus),
                memory_mib: self.memory.unwrap_or(d.memory_mib),
                disk_mib: self.disk.unwrap_or(d.disk_mib),
            },
            max_duration: self.timeout,
            labels: args::to_map(self.labels.clone()),
            node_selector: args::to_map(self.node_selector.clone()),
            network: tartarus_core::NetworkContract {
                egress: self.allow_egress.clone(),
                hosts: self.allow_host.clone(),
                ingress: self.expose.clone(),
            },
            sleep_after: self.sleep_after,
            max_sleep: self.max_sleep,
            ..SoulRequest::default()
        }
    }
}

/// Runs the verb.
pub async fn execute(args: Args, g: &Global) -> anyhow::Result<i32> {
    let client = Client::new(g)?;
    let soul = args.soul();
    if soul.command.is_none() {
        // A session: wait until it runs, so the printed id is ready for `exec`.
        let rec = client.create(&soul, true).await.context("cannot create the session sandbox")?;
        if rec.state.is_terminal() {
            let (code, message) = exit_status(&rec.id, &ExitInfo::from(&rec));
            eprintln!("{}", message.unwrap_or_else(|| format!("tartarus: session sandbox {} ended at once", rec.id)));
            return Ok(if code == 0 { 125 } else { code });
        }
        println!("{}", rec.id);
        return Ok(0);
    }
    // Listen for Ctrl-C before the sandbox exists, so an interrupt at any point kills it.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot listen for Ctrl-C")?;
    let rec = client.create(&soul, false).await.context("cannot create the sandbox")?;
    let id = rec.id;
    if args.detach {
        println!("{id}");
        return Ok(0);
    }
    let mut stream = client.logs(&id, true).await.with_context(|| format!("cannot follow sandbox {id}"))?;
    let exit = tokio::select! {
        r = output::pump(&mut stream) => match r {
            Ok(exit) => exit,
            Err(e) => {
                // Our own output was closed (e.g. piped into `head`): nobody reads the sandbox any more.
                if e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)) {
                    let _ = client.delete(&id).await;
                    return Ok(141);
                }
                return Err(e).with_context(|| format!("following sandbox {id}"));
            }
        },
        _ = interrupt.recv() => {
            eprintln!("tartarus: interrupted; killing sandbox {id}");
            if let Err(e) = client.delete(&id).await {
                eprintln!("tartarus: could not kill sandbox {id}: {e:#}");
            }
            return Ok(130);
        }
    };
    let exit = match exit {
        Some(exit) => exit,
        // The stream stopped without an exit event: ask for the record instead.
        None => {
            let rec = client.get(&id).await.with_context(|| format!("the output of sandbox {id} stopped early"))?;
            if !rec.state.is_terminal() {
                anyhow::bail!(
                    "the output of sandbox {id} stopped before it ended; follow it with `tartarus logs -f {id}`"
                );
            }
            ExitInfo::from(&rec)
        }
    };
    let (code, message) = exit_status(&id, &exit);
    if let Some(m) = message {
        eprintln!("{m}");
    }
    Ok(code)
}

/// The exit code for how sandbox `id` ended, and what to tell the user when it did not exit
/// by itself.
pub fn exit_status(id: &SandboxId, exit: &ExitInfo) -> (i32, Option<String>) {
    let error = || exit.error.as_deref().unwrap_or("unknown error");
    match exit.state {
        SandboxState::Exited => match exit.exit_code {
            Some(code) => (code, None),
            None => (125, Some(format!("tartarus: sandbox {id} exited without an exit code"))),
        },
        SandboxState::Killed => {
            let why = exit.kill_reason.map_or("killed", KillReason::describe);
            let code = if exit.kill_reason == Some(KillReason::Timeout) { 124 } else { 137 };
            (code, Some(format!("tartarus: sandbox {id} killed: {why}")))
        }
        SandboxState::Failed | SandboxState::Lost => {
            (125, Some(format!("tartarus: sandbox {id} {}: {}", exit.state.as_str(), error())))
        }
        other => (125, Some(format!("tartarus: sandbox {id} stopped streaming while {}", other.as_str()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn exit(state: SandboxState, code: Option<i32>, reason: Option<KillReason>, error: Option<&str>) -> ExitInfo {
        ExitInfo { state, exit_code: code, kill_reason: reason, error: error.map(String::from) }
    }

    #[test]
    fn exit_codes() {
        let id = SandboxId::parse("sb-0123456789abcdef").unwrap();
        assert_eq!(exit_status(&id, &exit(SandboxState::Exited, Some(3), None, None)), (3, None));
        let (code, msg) = exit_status(&id, &exit(SandboxState::Killed, None, Some(KillReason::Timeout), None));
        assert_eq!(code, 124);
        assert_eq!(msg.unwrap(), "tartarus: sandbox sb-0123456789abcdef killed: ran past its max_duration");
        assert_eq!(exit_status(&id, &exit(SandboxState::Killed, None, Some(KillReason::OutOfMemory), None)).0, 137);
        let (code, msg) = exit_status(&id, &exit(SandboxState::Failed, None, None, Some("command not found")));
        assert_eq!(code, 125);
        assert_eq!(msg.unwrap(), "tartarus: sandbox sb-0123456789abcdef failed: command not found");
        assert_eq!(exit_status(&id, &exit(SandboxState::Lost, None, None, None)).0, 125);
    }

    #[test]
    fn arguments_become_a_soul() {
        let cli = Cli::parse_from([
            "run",
            "--template",
            "busybox",
            "--memory",
            "512",
            "--timeout",
            "30s",
            "-e",
            "A=1",
            "--label",
            "team=x",
            "--",
            "sh",
            "-c",
            "echo $A",
        ]);
        let soul = cli.args.soul();
        assert_eq!(soul.command.unwrap(), ["sh", "-c", "echo $A"]);
        assert_eq!(soul.resources.memory_mib, 512);
        assert_eq!(soul.resources.vcpus, 1);
        assert_eq!(soul.max_duration.unwrap().0.as_secs(), 30);
        assert_eq!(soul.env["A"], "1");
        assert_eq!(soul.labels["team"], "x");
        let session = Cli::parse_from(["run", "-t", "busybox"]).args.soul();
        assert!(session.command.is_none());
        // Only the fields given are sent; the realm fills the rest.
        let json = serde_json::to_value(&session).unwrap();
        assert!(json.get("max_duration").is_none() && json.get("command").is_none());
    }
}
