//! `tartarus up` — the whole realm in one process: Olympus (API, judges, Acheron, Moirai) and
//! one Hecatoncheir running gVisor sandboxes, on embedded state in the data directory.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tartarus_hecatoncheir::runtime::gvisor::{Gvisor, GvisorConfig, Platform};
use tartarus_hecatoncheir::{AgentConfig, Hecatoncheir};
use tartarus_olympus::judges::Policy;
use tartarus_olympus::{Olympus, OlympusConfig};
use tartarus_store::{EmbeddedStore, Events, State};

use super::Global;

/// Arguments of `tartarus up`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  tartarus up                                # 127.0.0.1:7070, data in /var/lib/tartarus\n  tartarus up --listen 0.0.0.0:7070 --platform ptrace\n  tartarus --data-dir /tmp/realm up --listen 127.0.0.1:0   # any free port\n\nThe admin token is printed and written to <data-dir>/admin.token; client verbs on this\nmachine read it from there. Sandboxes keep running if the realm stops; the next `up`\nre-adopts them (or records them as lost)."
)]
pub struct Args {
    /// Address to serve the API on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// The runsc binary (default: /usr/local/lib/tartarus/runsc, else runsc on PATH).
    #[arg(long)]
    pub runsc: Option<PathBuf>,
    /// gVisor platform: auto (systrap if this runsc has it, else ptrace), systrap, ptrace, kvm.
    #[arg(long, default_value = "auto")]
    pub platform: String,
    /// Static binary that keeps session sandboxes up (mounted read-only inside them).
    #[arg(long, default_value = "/bin/busybox")]
    pub session_init: PathBuf,
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
}

fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("MemTotal:").map(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        })
        .flatten()
        .map_or(1024, |kb| kb / 1024)
}

/// Reads the admin token, or makes one (readable by root only).
fn admin_token(data_dir: &Path) -> anyhow::Result<(String, PathBuf)> {
    let path = data_dir.join("admin.token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        if !t.trim().is_empty() {
            return Ok((t.trim().to_owned(), path));
        }
    }
    let token = format!("tt_{:032x}", rand_u128());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(token.as_bytes())?;
    Ok((token, path))
}

fn rand_u128() -> u128 {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .expect("/dev/urandom");
    u128::from_le_bytes(b)
}

/// Runs the realm until SIGINT or SIGTERM.
pub async fn execute(args: Args, g: &Global) -> anyhow::Result<i32> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none())
        .init();
    if !nix_is_root() {
        bail!("tartarus up must run as root (gVisor needs it to build sandboxes); try sudo");
    }
    // Everything below holds tenants' environment and output: only root may read it.
    let created = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&g.data_dir);
    created.with_context(|| format!("creating data dir {}", g.data_dir.display()))?;
    // Absolute, so the shims' command lines (how restarts recognise them) never depend on the cwd.
    let data = &std::fs::canonicalize(&g.data_dir).with_context(|| format!("resolving {}", g.data_dir.display()))?;
    let store = Arc::new(
        EmbeddedStore::open(&data.join("state.redb"))
            .context("opening the state database (is another `tartarus up` using this data dir?)")?,
    );
    let state = State::embedded(store);
    let events = Events::default();
    let (token, token_path) = admin_token(data)?;

    let runtime = Gvisor::new(GvisorConfig {
        runsc: args.runsc.clone(),
        platform: Platform::parse(&args.platform).map_err(anyhow::Error::msg)?,
        state_root: data.join("runsc"),
        session_init: args.session_init.clone(),
        cgroup_mount: "/sys/fs/cgroup".into(),
    })
    .context("setting up the gVisor runtime (see `tartarus doctor`)")?;
    let describe = tartarus_hecatoncheir::runtime::Runtime::describe(&runtime);
    let node_name = args.node_name.clone().unwrap_or_else(|| {
        nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "node-1".into())
    });
    let vcpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let memory_mib = host_memory_mib();
    let agent = Hecatoncheir::new(
        AgentConfig {
            node_name,
            sandboxes_dir: data.join("sandboxes"),
            shim_exe: std::env::current_exe().context("locating the tartarus binary for the shim")?,
            vcpus,
            memory_mib,
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
    let blobs = match args.store.as_deref() {
        Some(url) if url.starts_with("s3://") => {
            tartarus_erebus::blobs::BlobStore::s3(url, &data.join("erebus").join("cache"))
        }
        Some(dir) => tartarus_erebus::blobs::BlobStore::local(std::path::Path::new(dir)),
        None => tartarus_erebus::blobs::BlobStore::local(&data.join("erebus").join("store")),
    }
    .context("opening the blob store")?;
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
            },
        },
        state,
        events,
        vec![Arc::new(agent) as Arc<dyn tartarus_olympus::moirai::Node>],
    )
    .await
    .context("starting Olympus")?;
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "tartarus: listening on http://{addr}")?;
        writeln!(out, "tartarus: admin token in {}", token_path.display())?;
        writeln!(out, "tartarus: runtime {describe}")?;
        out.flush()?;
    }
    olympus.serve(listener, shutdown_signal()).await.context("serving the API")?;
    eprintln!("tartarus: stopped; running sandboxes keep running and are re-adopted by the next `tartarus up`");
    Ok(0)
}

fn nix_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
