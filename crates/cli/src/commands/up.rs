//! `tartarus up` — the whole realm in one process: Olympus (API, judges, Acheron, Moirai) and
//! one Hecatoncheir running gVisor sandboxes, on embedded state in the data directory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tartarus_hecatoncheir::{AgentConfig, Hecatoncheir};
use tartarus_olympus::judges::Policy;
use tartarus_olympus::moirai::SchedulerConfig;
use tartarus_olympus::nodes::Directory;
use tartarus_olympus::{Olympus, OlympusConfig};
use tartarus_store::{EmbeddedStore, Events, State};

use super::daemon::{self, RuntimeArgs};
use super::Global;

/// Arguments of `tartarus up`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  tartarus up                                # 127.0.0.1:7070, data in /var/lib/tartarus\n  tartarus up --listen 0.0.0.0:7070 --platform ptrace\n  tartarus --data-dir /tmp/realm up --listen 127.0.0.1:0   # any free port\n\nThe admin token is printed and written to <data-dir>/admin.token; client verbs on this\nmachine read it from there. Sandboxes keep running if the realm stops; the next `up`\nre-adopts them (or records them as lost). For a realm of many machines see\n`tartarus olympus --help` and `tartarus agent --help`."
)]
pub struct Args {
    /// Address to serve the API on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// This node's name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Most live sandboxes per tenant (Minos's quota).
    #[arg(long, default_value_t = 256)]
    pub max_live: usize,
    /// Where image blobs and template artifacts go: a directory (default <data-dir>/erebus/store)
    /// or s3://bucket/prefix (endpoint and credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION; AWS_ALLOW_HTTP=true for plain HTTP).
    #[arg(long)]
    pub store: Option<String>,
    /// Largest memory one sandbox may ask for, MiB (Rhadamanthus's policy; default: the host's memory).
    #[arg(long)]
    pub max_memory: Option<u64>,
    /// Networks sandboxes may be allowed to reach (Rhadamanthus's policy; repeatable; default
    /// 0.0.0.0/0). A request allowing egress outside them is refused (403).
    #[arg(long = "egress-within", value_name = "CIDR")]
    pub egress_within: Vec<tartarus_core::network::Cidr>,
}

/// How often the in-process agent refreshes its heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// Runs the realm until SIGINT or SIGTERM.
pub async fn execute(args: Args, g: &Global) -> anyhow::Result<i32> {
    daemon::init_logging();
    let data = &daemon::data_dir(g, "up")?;
    let store = Arc::new(
        EmbeddedStore::open(&data.join("state.redb"))
            .context("opening the state database (is another `tartarus up` using this data dir?)")?,
    );
    let state = State::embedded(store);
    let events = Events::default();
    let (token, token_path) = daemon::admin_token(data)?;
    let runtime = args.runtime.gvisor(data)?;
    let describe = tartarus_hecatoncheir::runtime::Runtime::describe(&runtime);
    let (vcpus, memory_mib) = (daemon::host_vcpus(), daemon::host_memory_mib());
    let blobs = daemon::blobs(args.store.as_deref(), data)?;
    let agent = Hecatoncheir::new(
        AgentConfig {
            node_name: args.node_name.clone().unwrap_or_else(|| daemon::host_name("node-1")),
            sandboxes_dir: data.join("sandboxes"),
            shim_exe: std::env::current_exe().context("locating the tartarus binary for the shim")?,
            vcpus: vcpus * daemon::CPU_OVERCOMMIT,
            memory_mib,
            slots: args.max_live.try_into().unwrap_or(u32::MAX),
            labels: Default::default(),
            address: None,
            nyx: Some(tartarus_hecatoncheir::nyx::Nyx::new(data.join("nyx"), blobs.clone())),
            hypnos: Some(tartarus_hecatoncheir::nyx::Nyx::new(data.join("hypnos"), blobs.clone())),
            styx: daemon::styx(data, &runtime).await,
            simulate_launch: None,
        },
        Arc::new(runtime),
        state.clone(),
        events.clone(),
    );
    let report = agent.adopt().await.context("re-adopting sandboxes from before the restart")?;
    if report != Default::default() {
        eprintln!(
            "tartarus: after restart: {} re-adopted, {} had ended meanwhile, {} queued again, {} lost",
            report.adopted.len(),
            report.finished.len(),
            report.requeued.len(),
            report.lost.len()
        );
    }
    // Fresh in Hades before Olympus looks: an old heartbeat would make the node look dead.
    state.hades.heartbeat(&agent.node_info()).await.context("registering the node")?;
    tokio::spawn(agent.clone().heartbeats(state.hades.clone(), HEARTBEAT));
    tokio::spawn(agent.clone().keep_pools());
    let pools = agent.clone();
    let olympus = Olympus::start(
        OlympusConfig {
            admin_token: token,
            data_dir: data.clone(),
            max_live_per_tenant: args.max_live,
            blobs,
            policy: Policy {
                max_memory_mib: args.max_memory.unwrap_or(memory_mib),
                max_vcpus: vcpus.max(1) * 4,
                max_duration: Duration::from_secs(24 * 3600),
                egress_within: match &args.egress_within {
                    w if w.is_empty() => Policy::any_egress(),
                    w => w.clone(),
                },
            },
            scheduler: SchedulerConfig::default(),
            agent_secret: None,
            hypnos: tartarus_olympus::hypnos::enabled_by_env(),
        },
        state,
        events,
        Directory::local(vec![agent]),
    )
    .await
    .context("starting Olympus")?;
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    daemon::announce(&[
        format!("listening on http://{addr}"),
        format!("admin token in {}", token_path.display()),
        format!("runtime {describe}"),
        match tartarus_olympus::hypnos::enabled_by_env() {
            true => "hypnos on: sandboxes may sleep and wake".to_owned(),
            false => "hypnos off (ENABLE_HYPNOS=1 turns sleep and wake on)".to_owned(),
        },
    ])?;
    olympus.serve(listener, daemon::shutdown_signal()).await.context("serving the API")?;
    pools.empty_pools().await;
    eprintln!("tartarus: stopped; running sandboxes keep running and are re-adopted by the next `tartarus up`");
    Ok(0)
}
