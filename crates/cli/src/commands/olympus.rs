//! `tartarus olympus` — the control plane of a realm of many nodes: the API, the judges, Acheron
//! and the Moirai on Redis; sandboxes run on `tartarus agent` daemons.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tartarus_olympus::judges::Policy;
use tartarus_olympus::moirai::{SchedulerConfig, Strategy};
use tartarus_olympus::nodes::Directory;
use tartarus_olympus::{Olympus, OlympusConfig};
use tartarus_store::{Events, RedisConfig, RedisStore, State};

use super::daemon;
use super::Global;
use crate::args;

/// Arguments of `tartarus olympus`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  tartarus olympus --redis redis://10.0.0.2:6379 --listen 0.0.0.0:7070
  tartarus --data-dir /tmp/o1 olympus --redis redis://127.0.0.1:6379 --listen 127.0.0.1:7070 --name o1

Writes <data-dir>/admin.token (the API key, as `tartarus up` does) and, unless given,
<data-dir>/agent.secret: the secret every `tartarus agent` of the realm must be given
(--agent-secret-file). Several Olympus processes may share one Redis (give each its own
--name): they share the queue without placing a sandbox twice.

Redis must keep what it acknowledges: `appendonly yes` and `maxmemory-policy noeviction`
(`tartarus doctor --redis URL` checks). Templates: their root filesystems must be at the
same path on every node (a shared filesystem, or the same data dir on one machine).")]
pub struct Args {
    /// Redis holding the realm's state, queue and registry.
    #[arg(long, env = "TARTARUS_REDIS", value_name = "URL")]
    pub redis: String,
    /// Prefix of every Redis key of this realm.
    #[arg(long, default_value = "tartarus")]
    pub redis_prefix: String,
    /// Address to serve the API on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// This Olympus's name in Acheron's consumer group; keep it across restarts (default: host name).
    #[arg(long)]
    pub name: Option<String>,
    /// The secret shared with agents (made if missing; default <data-dir>/agent.secret).
    #[arg(long, env = "TARTARUS_AGENT_SECRET_FILE", value_name = "PATH")]
    pub agent_secret_file: Option<PathBuf>,
    /// A node whose heartbeat is older than this is dead: its sandboxes are lost, its pending ones rescheduled.
    #[arg(long, value_parser = args::duration, default_value = "10s")]
    pub dead_after: tartarus_core::HumanDuration,
    /// Longest a sandbox waits for a node that fits before it fails.
    #[arg(long, value_parser = args::duration, default_value = "5m")]
    pub pending_timeout: tartarus_core::HumanDuration,
    /// Queue entries held by a silent Olympus this long are taken over by another.
    #[arg(long, value_parser = args::duration, default_value = "30s")]
    pub claim_after: tartarus_core::HumanDuration,
    /// Placements tried before a sandbox fails into Cocytus (its node died, refused the launch,
    /// or did not answer for 3 × --dead-after); each failed attempt is a `retry` in Cocytus.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// How often the realm is reconciled in the background (also at start-up and on demand).
    #[arg(long, value_parser = args::duration, default_value = "30s")]
    pub reconcile_every: tartarus_core::HumanDuration,
    /// How Atropos picks among the nodes that fit: least-loaded (spread) or bin-pack.
    #[arg(long, default_value = "least-loaded", value_parser = Strategy::parse)]
    pub placement: Strategy,
    /// Most live sandboxes per tenant (Minos's quota).
    #[arg(long, default_value_t = 256)]
    pub max_live: usize,
    /// Largest memory one sandbox may ask for, MiB (Rhadamanthus's policy).
    #[arg(long, default_value_t = 65536)]
    pub max_memory: u64,
    /// Networks sandboxes may be allowed to reach (Rhadamanthus's policy; repeatable; default
    /// 0.0.0.0/0). A request allowing egress outside them is refused (403).
    #[arg(long = "egress-within", value_name = "CIDR")]
    pub egress_within: Vec<tartarus_core::network::Cidr>,
    /// Where image blobs and template artifacts go (a directory or s3://bucket/prefix).
    #[arg(long)]
    pub store: Option<String>,
}

/// Runs the control plane until SIGINT or SIGTERM.
pub async fn execute(args: Args, g: &Global) -> anyhow::Result<i32> {
    daemon::init_logging();
    let data = &daemon::data_dir(g, "olympus")?;
    let name = args.name.clone().unwrap_or_else(|| daemon::host_name("olympus"));
    let redis = RedisStore::connect(RedisConfig {
        url: args.redis.clone(),
        prefix: args.redis_prefix.clone(),
        consumer: name.clone(),
        claim_after: args.claim_after.0,
    })
    .await
    .context("connecting to Redis")?;
    let events = Events::relayed();
    redis.relay(events.clone());
    let state = State::redis(redis);
    let (token, token_path) = daemon::admin_token(data)?;
    let secret_path = args.agent_secret_file.clone().unwrap_or_else(|| data.join("agent.secret"));
    let secret = daemon::secret_file(&secret_path, "ta_", true)?;
    let olympus = Olympus::start(
        OlympusConfig {
            admin_token: token,
            data_dir: data.clone(),
            max_live_per_tenant: args.max_live,
            blobs: daemon::blobs(args.store.as_deref(), data)?,
            policy: Policy {
                max_memory_mib: args.max_memory,
                max_vcpus: 64,
                max_duration: Duration::from_secs(24 * 3600),
                egress_within: match &args.egress_within {
                    w if w.is_empty() => Policy::any_egress(),
                    w => w.clone(),
                },
            },
            scheduler: SchedulerConfig {
                dead_after: args.dead_after.0,
                pending_timeout: args.pending_timeout.0,
                max_attempts: args.max_attempts.max(1),
                strategy: args.placement,
                reconcile_every: args.reconcile_every.0.max(Duration::from_secs(1)),
            },
            agent_secret: Some(secret.clone()),
            hypnos: tartarus_olympus::hypnos::enabled_by_env(),
        },
        state,
        events,
        Directory::remote(secret),
    )
    .await
    .context("starting Olympus")?;
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    daemon::announce(&[
        format!("listening on http://{addr}"),
        format!("admin token in {}", token_path.display()),
        format!("agent secret in {}", secret_path.display()),
        format!("olympus {name} on {}", args.redis),
    ])?;
    olympus.serve(listener, daemon::shutdown_signal()).await.context("serving the API")?;
    eprintln!(
        "tartarus: olympus {name} stopped; what it held in Acheron is taken over by another Olympus or by its restart"
    );
    Ok(0)
}
