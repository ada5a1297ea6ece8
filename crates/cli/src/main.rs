//! The `tartarus` binary: parses the command line, wires the crates, maps errors to exit codes.

mod args;
mod client;
mod commands;
mod output;
mod progress;
mod raw;

use clap::{Parser, Subcommand};

/// Tartarus runs untrusted code in isolated sandboxes (gVisor), on one machine or a fleet.
#[derive(Parser)]
#[command(
    name = "tartarus",
    version,
    propagate_version = true,
    max_term_width = 100,
    after_help = "Examples:\n  tartarus up &                                   # the realm (as root)\n  tartarus run --template busybox -- echo hello   # a sandbox; exits with its code\n  tartarus ps                                     # what ran, and how it ended\n  tartarus doctor                                 # what works on this host\n\nEach verb has --help with more examples."
)]
struct Cli {
    #[command(flatten)]
    global: commands::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole realm in this process: API, judges, queue, scheduler and node agent.
    Up(commands::up::Args),
    /// Run the control plane of a realm of many nodes, on Redis.
    Olympus(commands::olympus::Args),
    /// Run a node agent of a realm of many nodes.
    Agent(commands::agent::Args),
    /// Run a command in a new sandbox and stream its output; exits with the sandbox's code.
    Run(commands::run::Args),
    /// List sandboxes.
    Ps(commands::ps::Args),
    /// Show (or follow) a sandbox's output.
    Logs(commands::logs::Args),
    /// Run a further command in a running sandbox.
    Exec(commands::exec::Args),
    /// Kill a sandbox.
    Kill(commands::kill::Args),
    /// Show one sandbox: state, node, how it started, its network address and rules.
    Inspect(commands::inspect::Args),
    /// Put sandboxes to sleep (Hypnos): checkpointed to storage, their node released.
    Sleep(commands::hypnos::SleepArgs),
    /// Wake sleeping sandboxes (Hypnos): restored where they were, on any node.
    Wake(commands::hypnos::WakeArgs),
    /// List sleeping sandboxes with their checkpoint sizes and times (Hypnos).
    Sleeping(commands::hypnos::SleepingArgs),
    /// List the realm's nodes, or drain one.
    #[command(subcommand)]
    Node(commands::node::Command),
    /// Show failures (Cocytus): launch errors, lost sandboxes, enforcement kills.
    Failures(commands::failures::Args),
    /// Have Olympus rebuild its view from the agents and repair records.
    Reconcile(commands::reconcile::Args),
    /// Manage templates (root filesystems sandboxes start from).
    #[command(subcommand)]
    Template(commands::template::Command),
    /// Template snapshots (Nyx): list them, or drop one.
    #[command(subcommand)]
    Snapshot(commands::snapshot::Command),
    /// Check this host: which runtimes work, and what to install for those that do not.
    Doctor(commands::doctor::Args),
    /// Measure Tartarus against raw runtimes; prints JSON.
    #[command(subcommand)]
    Bench(commands::bench::Command),
    /// (internal) Hold a sandbox's main process and record its exit.
    #[command(hide = true)]
    Shim(commands::shim::Args),
}

fn main() {
    let cli = Cli::parse();
    // The shim runs without an async runtime or logging: it must stay small and detached.
    if let Command::Shim(args) = cli.command {
        std::process::exit(commands::shim::execute(args));
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let code = rt.block_on(async move {
        let g = cli.global;
        let result = match cli.command {
            Command::Up(a) => commands::up::execute(a, &g).await,
            Command::Olympus(a) => commands::olympus::execute(a, &g).await,
            Command::Agent(a) => commands::agent::execute(a, &g).await,
            Command::Node(c) => commands::node::execute(c, &g).await,
            Command::Failures(a) => commands::failures::execute(a, &g).await,
            Command::Reconcile(a) => commands::reconcile::execute(a, &g).await,
            Command::Run(a) => commands::run::execute(a, &g).await,
            Command::Ps(a) => commands::ps::execute(a, &g).await,
            Command::Logs(a) => commands::logs::execute(a, &g).await,
            Command::Exec(a) => commands::exec::execute(a, &g).await,
            Command::Kill(a) => commands::kill::execute(a, &g).await,
            Command::Inspect(a) => commands::inspect::execute(a, &g).await,
            Command::Sleep(a) => commands::hypnos::sleep(a, &g).await,
            Command::Wake(a) => commands::hypnos::wake(a, &g).await,
            Command::Sleeping(a) => commands::hypnos::sleeping(a, &g).await,
            Command::Template(c) => commands::template::execute(c, &g).await,
            Command::Snapshot(c) => commands::snapshot::execute(c, &g).await,
            Command::Doctor(a) => commands::doctor::execute(a, &g).await,
            Command::Bench(c) => commands::bench::execute(c, &g).await,
            Command::Shim(_) => unreachable!("handled above"),
        };
        match result {
            Ok(code) => code,
            Err(e) => {
                eprintln!("tartarus: {e:#}");
                1
            }
        }
    });
    std::process::exit(code);
}
