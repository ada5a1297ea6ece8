//! What the long-running roles (`up`, `olympus`, `agent`) share: logging, the data directory,
//! tokens and secrets, the gVisor runtime's options, the blob store, and shutdown signals.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tartarus_hecatoncheir::runtime::gvisor::{Gvisor, GvisorConfig, Platform};

use super::Global;

/// Options of the gVisor runtime.
#[derive(clap::Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// The runsc binary (default: /usr/local/lib/tartarus/runsc, else runsc on PATH).
    #[arg(long)]
    pub runsc: Option<PathBuf>,
    /// gVisor platform: auto (systrap if this runsc has it, else ptrace), systrap, ptrace, kvm.
    #[arg(long, default_value = "auto")]
    pub platform: String,
    /// Static binary that keeps session sandboxes up (mounted read-only inside them).
    #[arg(long, default_value = "/bin/busybox")]
    pub session_init: PathBuf,
}

impl RuntimeArgs {
    /// The gVisor runtime keeping its state under `data`.
    pub fn gvisor(&self, data: &Path) -> anyhow::Result<Gvisor> {
        Gvisor::new(GvisorConfig {
            runsc: self.runsc.clone(),
            platform: Platform::parse(&self.platform).map_err(anyhow::Error::msg)?,
            state_root: data.join("runsc"),
            session_init: self.session_init.clone(),
            cgroup_mount: "/sys/fs/cgroup".into(),
        })
        .context("setting up the gVisor runtime (see `tartarus doctor`)")
    }
}

/// Logs to stderr, `RUST_LOG` deciding what (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none())
        .init();
}

/// Creates the data directory (root only: it holds tenants' environment and output) and
/// returns its absolute path, so shims' command lines never depend on the working directory.
pub fn data_dir(g: &Global, role: &str) -> anyhow::Result<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        bail!("tartarus {role} must run as root (gVisor needs it to build sandboxes); try sudo");
    }
    let created = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&g.data_dir);
    created.with_context(|| format!("creating data dir {}", g.data_dir.display()))?;
    std::fs::canonicalize(&g.data_dir).with_context(|| format!("resolving {}", g.data_dir.display()))
}

/// The host's memory, MiB.
pub fn host_memory_mib() -> u64 {
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

/// vCPUs offered per host core by default: CPU time is shared, so sandboxes asking for one
/// vCPU each may outnumber the cores many times (memory, which is not shared, is not overcommitted).
pub const CPU_OVERCOMMIT: u32 = 16;

/// The host's cores.
pub fn host_vcpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// The host's name (or `fallback`).
pub fn host_name(fallback: &str) -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| fallback.into())
}

/// Reads a secret from `path`, or makes one there (readable by root only) when `create`.
pub fn secret_file(path: &Path, prefix: &str, create: bool) -> anyhow::Result<String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_owned());
        }
    }
    if !create {
        bail!("no secret in {}: copy the file Olympus wrote (its --agent-secret-file) here", path.display());
    }
    let token = format!("{prefix}{:032x}", rand_u128());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(token.as_bytes())?;
    Ok(token)
}

/// The admin token of the realm whose data dir is `data_dir` (made on first start).
pub fn admin_token(data_dir: &Path) -> anyhow::Result<(String, PathBuf)> {
    let path = data_dir.join("admin.token");
    Ok((secret_file(&path, "tt_", true)?, path))
}

fn rand_u128() -> u128 {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .expect("/dev/urandom");
    u128::from_le_bytes(b)
}

/// Opens Erebus's blob store: a directory, or `s3://bucket/prefix`, default `<data>/erebus/store`.
pub fn blobs(store: Option<&str>, data: &Path) -> anyhow::Result<tartarus_erebus::blobs::BlobStore> {
    match store {
        Some(url) if url.starts_with("s3://") => {
            tartarus_erebus::blobs::BlobStore::s3(url, &data.join("erebus").join("cache"))
        }
        Some(dir) => tartarus_erebus::blobs::BlobStore::local(Path::new(dir)),
        None => tartarus_erebus::blobs::BlobStore::local(&data.join("erebus").join("store")),
    }
    .context("opening the blob store")
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Prints the lines a starting daemon owes its operator (stdout, flushed: scripts wait for them).
pub fn announce(lines: &[String]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for l in lines {
        writeln!(out, "tartarus: {l}")?;
    }
    out.flush()?;
    Ok(())
}

/// Styx's networking on this node, or `None` (said on stderr) when its bridge and chains cannot
/// be set up: sandboxes without a network contract still run. With it, decides how gVisor uses
/// each sandbox's namespace (netstack where this runsc can, host mode otherwise; said on stderr).
pub async fn styx(data: &Path, runtime: &Gvisor) -> Option<std::sync::Arc<tartarus_hecatoncheir::styx::Styx>> {
    use tartarus_hecatoncheir::styx::{Styx, StyxConfig};
    match Styx::start(StyxConfig::new(data)).await {
        Ok(s) => {
            let (mode, why) = runtime.probe_network(data);
            match why {
                None => eprintln!("tartarus: sandbox network mode: {}", mode.describe()),
                Some(why) => {
                    eprintln!("tartarus: sandbox network mode: {} (netstack unavailable: {why})", mode.describe())
                }
            }
            Some(std::sync::Arc::new(s))
        }
        Err(e) => {
            eprintln!("tartarus: sandbox networking unavailable (sandboxes with a network contract will fail): {e}");
            None
        }
    }
}
