//! `tartarus agent` — a node of a realm of many nodes: registers with Hades, heartbeats, and runs
//! the sandboxes Olympus hands it, behind an API only Olympus (holding the agent secret) may call.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tartarus_hecatoncheir::{AgentConfig, Hecatoncheir};
use tartarus_store::{Events, RedisConfig, RedisStore, State};
use tracing::{info, warn};

use super::daemon::{self, RuntimeArgs};
use super::Global;
use crate::args;

/// Arguments of `tartarus agent`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  tartarus agent --olympus http://10.0.0.1:7070 --redis redis://10.0.0.2:6379 \\
      --node-id node-a --listen 0.0.0.0:7071 --advertise http://10.0.0.5:7071 \\
      --labels zone=a,disk=ssd --agent-secret-file /etc/tartarus/agent.secret
  # several agents on one machine (tests): separate data dirs, ports and node ids
  tartarus --data-dir /tmp/a1 agent --olympus http://127.0.0.1:7070 --redis redis://127.0.0.1:6379 \\
      --node-id a1 --listen 127.0.0.1:7101 --agent-secret-file /tmp/o1/agent.secret

The agent re-adopts sandboxes still running from before a restart, reports them to
Olympus, and heartbeats to Hades every --heartbeat; Olympus declares it dead when the
heartbeat lapses (its `--dead-after`).")]
pub struct Args {
    /// Olympus's API (the agent reports its (re)starts there).
    #[arg(long, env = "TARTARUS_OLYMPUS", value_name = "URL")]
    pub olympus: String,
    /// Redis holding the realm's state.
    #[arg(long, env = "TARTARUS_REDIS", value_name = "URL")]
    pub redis: String,
    /// Prefix of every Redis key of this realm (as given to Olympus).
    #[arg(long, default_value = "tartarus")]
    pub redis_prefix: String,
    /// This node's id in Hades (default: the host name).
    #[arg(long)]
    pub node_id: Option<String>,
    /// Address the agent API listens on.
    #[arg(long, default_value = "127.0.0.1:7071")]
    pub listen: SocketAddr,
    /// URL Olympus reaches this agent at (default: http://<listen>; required when listening on 0.0.0.0).
    #[arg(long, value_name = "URL")]
    pub advertise: Option<String>,
    /// Labels for node selectors (comma-separated KEY=VALUE).
    #[arg(long, value_name = "KEY=VALUE,...", value_delimiter = ',', value_parser = args::key_value)]
    pub labels: Vec<(String, String)>,
    /// The realm's agent secret (Olympus writes it to <its data-dir>/agent.secret).
    #[arg(long, env = "TARTARUS_AGENT_SECRET_FILE", value_name = "PATH")]
    pub agent_secret_file: PathBuf,
    /// vCPUs offered to sandboxes (default: 16 per core; CPU time is shared).
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Memory offered to sandboxes, MiB (default: the host's memory).
    #[arg(long)]
    pub memory: Option<u64>,
    /// Most sandboxes at once.
    #[arg(long, default_value_t = 256)]
    pub slots: u32,
    /// On SIGTERM, end this node's sandboxes gracefully (SIGTERM, up to this long, then SIGKILL;
    /// reason system_shutdown) before stopping. Without it they keep running and are re-adopted
    /// by the agent's next start.
    #[arg(long, value_name = "GRACE", value_parser = args::duration)]
    pub drain_on_shutdown: Option<tartarus_core::HumanDuration>,
    /// Where Nyx's snapshot artifacts are (a directory or s3://bucket/prefix; default
    /// <data-dir>/erebus/store): give every agent and Olympus the same store in a fleet.
    #[arg(long)]
    pub store: Option<String>,
    /// How often to heartbeat to Hades.
    #[arg(long, value_parser = args::duration, default_value = "2s")]
    pub heartbeat: tartarus_core::HumanDuration,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// BENCHMARKS OF THE CONTROL PLANE ONLY: start no sandboxes; record each as running, then
    /// as exited after this long. Never for real use or tests.
    #[arg(long, value_parser = args::duration, hide = true)]
    pub simulate_launch: Option<tartarus_core::HumanDuration>,
}

/// Runs the node agent until SIGINT or SIGTERM.
pub async fn execute(args: Args, g: &Global) -> anyhow::Result<i32> {
    daemon::init_logging();
    let data = &daemon::data_dir(g, "agent")?;
    let node = args.node_id.clone().unwrap_or_else(|| daemon::host_name("node"));
    let secret = daemon::secret_file(&args.agent_secret_file, "", false)?;
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    let bound = listener.local_addr()?;
    let address = match &args.advertise {
        Some(a) => a.trim_end_matches('/').to_owned(),
        None if bound.ip().is_unspecified() => {
            bail!("listening on {bound}: give --advertise with the URL Olympus can reach this agent at")
        }
        None => format!("http://{bound}"),
    };
    let redis_cfg = RedisConfig {
        url: args.redis.clone(),
        prefix: args.redis_prefix.clone(),
        consumer: format!("agent-{node}"),
        claim_after: Duration::from_secs(30),
    };
    let redis = RedisStore::connect(redis_cfg.clone()).await.context("connecting to Redis")?;
    let state = State::redis(redis);
    let simulate = args.simulate_launch.map(|d| d.0);
    if let Some(d) = simulate {
        warn!(lasts = ?d, "SIMULATED LAUNCHES: no sandbox will be started (benchmark mode)");
    }
    let runtime = args.runtime.gvisor(data)?;
    let describe = tartarus_hecatoncheir::runtime::Runtime::describe(&runtime);
    let blobs = daemon::blobs(args.store.as_deref(), data)?;
    let agent = Hecatoncheir::new(
        AgentConfig {
            node_name: node.clone(),
            sandboxes_dir: data.join("sandboxes"),
            shim_exe: std::env::current_exe().context("locating the tartarus binary for the shim")?,
            vcpus: args.vcpus.unwrap_or(daemon::host_vcpus() * daemon::CPU_OVERCOMMIT),
            memory_mib: args.memory.unwrap_or_else(daemon::host_memory_mib),
            slots: args.slots,
            labels: args.labels.iter().cloned().collect(),
            address: Some(address.clone()),
            nyx: Some(tartarus_hecatoncheir::nyx::Nyx::new(data.join("nyx"), blobs.clone())),
            hypnos: Some(tartarus_hecatoncheir::nyx::Nyx::new(data.join("hypnos"), blobs)),
            styx: daemon::styx(data, &runtime).await,
            simulate_launch: simulate,
        },
        Arc::new(runtime),
        state.clone(),
        Events::default(),
    );
    let report = agent.adopt().await.context("re-adopting sandboxes from before the restart")?;
    state.hades.heartbeat(&agent.node_info()).await.context("registering the node with Hades")?;
    // Heartbeats on a thread and a Redis connection of their own: launches keep the agent's
    // runtime busy (process spawns, cgroups, bundles), and a late heartbeat means a dead node.
    let beat = (agent.clone(), redis_cfg.clone(), args.heartbeat.0);
    std::thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("heartbeat runtime");
            rt.block_on(async move {
                let (agent, cfg, every) = beat;
                let hades = loop {
                    match RedisStore::connect(cfg.clone()).await {
                        Ok(r) => break r,
                        Err(e) => {
                            warn!(error = %e, "heartbeat connection to Redis failed; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                };
                agent.heartbeats(hades, every).await
            })
        })
        .context("starting the heartbeat thread")?;
    tokio::spawn(agent.clone().watch_disowned(args.heartbeat.0 * 5));
    tokio::spawn(agent.clone().keep_pools());
    let hello = tartarus_olympus::api::agents::Hello {
        node: node.clone(),
        adopted: report.adopted,
        finished: report.finished,
        lost: report.lost,
        requeued: report.requeued,
    };
    tokio::spawn(say_hello(args.olympus.clone(), secret.clone(), hello));
    daemon::announce(&[
        format!("agent {node} listening on {address}"),
        format!("runtime {describe}"),
        format!("labels {:?}", args.labels),
    ])?;
    let agent_for_drain = agent.clone();
    let app = tartarus_hecatoncheir::api::router(agent, secret);
    // Streams Olympus proxies (logs -f, exec) may stay open: after the signal they get a short
    // grace, then the agent stops regardless (its sandboxes keep running).
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let signalled = async move {
        daemon::shutdown_signal().await;
        let _ = stop_tx.send(());
    };
    tokio::select! {
        r = axum::serve(listener, app).with_graceful_shutdown(signalled) => r.context("serving the agent API")?,
        _ = async {
            let _ = stop_rx.await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        } => {}
    }
    agent_for_drain.empty_pools().await;
    if let Some(grace) = args.drain_on_shutdown {
        let order = tartarus_core::KillOrder {
            reason: tartarus_core::KillReason::Shutdown,
            signal: libc::SIGTERM,
            grace_ms: grace.0.as_millis() as u64,
        };
        let n = agent_for_drain.end_all(order, grace.0 + Duration::from_secs(10)).await;
        eprintln!("tartarus: agent {node} stopped after ending its {n} sandboxes (drain on shutdown)");
        return Ok(0);
    }
    eprintln!("tartarus: agent {node} stopped; its sandboxes keep running and are re-adopted by its next start");
    Ok(0)
}

/// Tells Olympus this agent (re)started and what it found, retrying until Olympus answers.
async fn say_hello(olympus: String, secret: String, hello: tartarus_olympus::api::agents::Hello) {
    let url = format!("{}/v1/agents/hello", olympus.trim_end_matches('/'));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("http client");
    for attempt in 0u32.. {
        match http.post(&url).bearer_auth(&secret).json(&hello).send().await {
            Ok(r) if r.status().is_success() => {
                info!(%url, "reported to Olympus");
                return;
            }
            Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => {
                warn!(%url, "Olympus refused the agent secret: is --agent-secret-file the file Olympus wrote?");
                return;
            }
            Ok(r) if attempt == 0 => warn!(%url, status = %r.status(), "Olympus did not take the report; retrying"),
            Err(e) if attempt == 0 => warn!(%url, error = %e, "Olympus unreachable; retrying"),
            _ => {}
        }
        tokio::time::sleep(Duration::from_secs(2).min(Duration::from_millis(200) * (attempt + 1))).await;
    }
}
