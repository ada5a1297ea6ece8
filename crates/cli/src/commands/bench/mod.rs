//! `tartarus bench`: measures a realm against the plain tools on the same machine and prints
//! percentiles as JSON.
//!
//! `start` times sandboxes against raw `runsc run`; `pull` times template builds from a
//! registry against `skopeo copy` + `umoci unpack`. The contenders are timed alternately, round
//! by round, so both see the same machine load. The raw run uses the bundle the gVisor runtime
//! writes, over the same template rootfs, with the same platform and overlay choices, so the
//! difference is what Tartarus adds (API, judges, queue, scheduling, cgroups, shim, recording).
//! `schedule` measures the control plane alone, on a realm of its own.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tartarus_core::{HumanDuration, SandboxState, SoulRequest};
use tartarus_hecatoncheir::runtime::gvisor::{Platform, RunscInfo};

use super::Global;
use crate::client::Client;
use crate::output::{self, Format};
use crate::raw::{self, RawRun};

mod network;
mod schedule;

/// Untimed rounds of each before measuring.
const WARM_UP: u32 = 2;
/// The longest one run may take.
const RUN_LIMIT: Duration = Duration::from_secs(60);
/// The cgroup parent of the raw runs.
const CGROUP_PARENT: &str = "/tartarus-bench";

/// Subcommands.
#[derive(clap::Subcommand, Debug)]
#[command(after_help = "Examples:
  tartarus up &
  sudo tartarus bench start --template busybox -n 50 > bench.json
  sudo tartarus bench schedule --redis redis://127.0.0.1:6379 --agents 3 -n 5000")]
pub enum Command {
    /// Time `echo hi` through the realm (POST /v1/sandboxes?wait=true) against raw `runsc run`
    /// of the same bundle, alternating; prints p50/p95/p99 as JSON.
    Start(StartArgs),
    /// Time building a template from a registry image (cold and warm) against `skopeo copy` +
    /// `umoci unpack` of the same image, alternating; prints p50 and MB/s as JSON.
    Pull(PullArgs),
    /// Start a realm of one Olympus and N agents on Redis and time sandbox creation through it:
    /// admissions/s, p50/p95/p99 create latency and scheduling decisions/s, as JSON.
    Schedule(schedule::ScheduleArgs),
}

/// Arguments of `bench start`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  sudo tartarus bench start --template busybox -n 50
  sudo tartarus bench start --template busybox -n 20 --platform ptrace -o table
  sudo tartarus bench start --template busybox --from cold --from snapshot -n 30
  sudo tartarus bench start --template busybox --from cold --from snapshot --from pool -n 30
  sudo tartarus bench start --template busybox --network egress -n 30
  sudo tartarus bench start --template python-ds --from cold --from snapshot -n 10 \\
      --preload pandas -- python3 -c 'import pandas; print(1)'

Each round runs, in turn: one sandbox through the realm per --from path (POST /v1/sandboxes?
wait=true, create to exit), raw `runsc run` of the same command and bundle, and with --from
snapshot raw `runsc restore` of the same snapshot in the foreground with the command given to
its waiting hatch through a FIFO, as the realm does (to its exit; teardown untimed, as the realm
records the exit before it releases the sandbox).
Snapshot rounds use a copy of the template (imported from its rootfs, warmed, removed at the
end), so the template itself is never changed; cold rounds use a copy too when the template has
a snapshot. A copy keeps the rootfs, not an image's defaults (entrypoint, env, user). Pool
rounds use a copy with a warm pool of 2 (warmed first when --warm-command or --preload is given, so pooled
sandboxes are restored from its snapshot); each round waits, untimed, until one is ready, and a
run not served from the pool counts as a failure. With --from pool, raw `runsc exec` of the command
into a raw session booted beforehand (untimed) is timed too: the floor of the pool path.

Progress goes to stderr, the result to stdout. Exit code 1 when any measured run failed.")]
pub struct StartArgs {
    /// Template to run `echo hi` in (its rootfs must be on this machine).
    #[arg(long, short = 't', value_name = "TEMPLATE")]
    pub template: String,
    /// Measured runs of each.
    #[arg(short = 'n', long = "runs", value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub n: u32,
    /// Platform of the raw runs; `auto` makes the runtime's choice (systrap, else ptrace).
    #[arg(long, value_name = "PLATFORM", default_value = "auto",
          value_parser = ["auto", "systrap", "ptrace", "kvm"])]
    pub platform: String,
    /// The runsc of the raw runs (default: the one the runtime finds).
    #[arg(long, value_name = "PATH")]
    pub runsc: Option<PathBuf>,
    /// Launch paths to time through the realm (repeatable): cold (boot), snapshot (restored
    /// by Nyx from a warmed copy of the template), or pool (handed over from a warm pool).
    #[arg(long = "from", value_enum, default_values_t = [From::Cold])]
    pub from: Vec<From>,
    /// Also time the command in a sandbox with a network (`egress`: allowed to reach a sink in a
    /// namespace of the bench's own), beside the same without, and a 100 MiB transfer to it.
    #[arg(long, value_enum, value_name = "NETWORK")]
    pub network: Option<NetworkBench>,
    /// For --from snapshot (and pool): the warm-up run before the checkpoint, a shell command
    /// line run with `sh -c` (e.g. "python3 -c 'import pandas'").
    #[arg(long, value_name = "SCRIPT")]
    pub warm_command: Option<String>,
    /// For --from snapshot (and pool): modules a resident python3 imports before the checkpoint
    /// (`template warm --preload`; repeatable or comma-separated).
    #[arg(long, value_name = "MODULE", value_delimiter = ',')]
    pub preload: Vec<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Json)]
    pub output: Format,
    /// The command timed (default: echo hi).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// The network measured by `bench start --network`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkBench {
    /// Egress allowed to one address.
    Egress,
}

/// A launch path of `bench start`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// The sandbox boots (`runsc run`).
    Cold,
    /// The sandbox is restored from the template's Nyx snapshot.
    Snapshot,
    /// A sandbox kept ready in the template's warm pool is handed over and runs the command.
    Pool,
}

impl From {
    fn label(self) -> &'static str {
        match self {
            Self::Cold => "tartarus-cold",
            Self::Snapshot => "tartarus-snapshot",
            Self::Pool => "tartarus-pool",
        }
    }
}

/// Arguments of `bench pull`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  scripts/registry.sh start --port 0          # prints REGISTRY_HOST=127.0.0.1:PORT
  scripts/test-images.sh push oci:/srv/layouts/python-ds:latest bench/python-ds:latest \\
      --registry 127.0.0.1:PORT
  tartarus bench pull --image 127.0.0.1:PORT/bench/python-ds:latest --insecure -n 3

Each round times, in turn:
  tartarus-pull  a cold template build through the realm's API: the bench templates are removed
                 and `template prune` runs first, so every blob is fetched, verified and
                 unpacked again. Built with ext4: false, since skopeo and umoci make no
                 filesystem image; the JSON says \"ext4\": false.
  skopeo-umoci   `skopeo copy docker://REF oci:TMP:bench` then `umoci unpack`, timed together,
                 into a fresh temporary directory.
  tartarus-warm  a build of the same image into another template without pruning: the blobs
                 are cached and the unpacked image is reused.
The filesystems are synced (untimed) before each timed step, so none pays for the write-back
of the one before it. MB/s is the image's layer bytes (compressed, as the manifest lists them;
1 MB = 10^6 bytes) over the p50. Cold rounds are checked: a round in which the realm found a
blob cached (another template uses it) is reported on stderr.

Note: `template prune` frees every blob and unpacked image that no template of the realm uses,
not only the bench's. The bench templates are removed (and pruned) at the end. Progress goes to
stderr, the result to stdout. Exit code 1 when any measured round failed.")]
pub struct PullArgs {
    /// The image: HOST[:PORT]/REPO[:TAG] in a registry both the realm and skopeo reach.
    #[arg(long, value_name = "REF")]
    pub image: String,
    /// Plain HTTP to the registry (`--insecure` for the realm, `--src-tls-verify=false` for skopeo).
    #[arg(long)]
    pub insecure: bool,
    /// Measured rounds.
    #[arg(short = 'n', long = "runs", value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub n: u32,
    /// Untimed rounds first (they bring the registry's blobs into the page cache).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub warm_up: u32,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Json)]
    pub output: Format,
}

/// Runs the verb.
pub async fn execute(c: Command, g: &Global) -> anyhow::Result<i32> {
    match c {
        Command::Start(a) => start(a, g).await,
        Command::Pull(a) => pull(a, g).await,
        Command::Schedule(a) => schedule::execute(a).await,
    }
}

/// Latencies of one contender.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Summary {
    name: &'static str,
    n: u32,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
    mean_ms: Option<f64>,
    failures: u32,
}

#[derive(Debug, Serialize)]
struct Report {
    results: Vec<Summary>,
    /// The first realm path's p50 over runsc-run's.
    ratio_p50: Option<f64>,
    overhead_p50_ms: Option<f64>,
    /// tartarus-cold p50 over tartarus-pool p50 (how many times faster the pool is).
    #[serde(skip_serializing_if = "Option::is_none")]
    cold_over_pool_p50: Option<f64>,
    /// tartarus-network p50 minus tartarus-cold p50: what a network (namespace, veth, address,
    /// rules, and their removal) adds to a sandbox's start and end.
    #[serde(skip_serializing_if = "Option::is_none")]
    network_overhead_p50_ms: Option<f64>,
    /// 100 MiB sent from a networked sandbox to the allowed address, measured at the receiver.
    #[serde(skip_serializing_if = "Option::is_none")]
    transfer: Option<Transfer>,
    /// tartarus-pool p50 minus runsc-exec p50: what the realm adds to running the command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pool_overhead_p50_ms: Option<f64>,
    /// tartarus-cold p50 over tartarus-snapshot p50 (how many times faster the snapshot is).
    #[serde(skip_serializing_if = "Option::is_none")]
    cold_over_snapshot_p50: Option<f64>,
}

/// A measured transfer.
#[derive(Debug, Serialize)]
struct Transfer {
    bytes: u64,
    seconds: f64,
    mb_per_s: f64,
}

/// What the raw runs share.
struct RawSetup {
    info: RunscInfo,
    platform: Platform,
    rootfs: PathBuf,
    tmp: tempfile::TempDir,
    command: Vec<String>,
    /// What the command must print (`None`: anything, as long as it exits 0).
    expect: Option<String>,
    /// The local checkpoint of the snapshot, for raw restores.
    image: Option<PathBuf>,
}

impl RawSetup {
    /// One raw `runsc run` of `echo hi`; its time, or why it failed.
    async fn once(&self, label: &str) -> Result<Duration, String> {
        let id = format!("tartarus-bench-{}-{label}", std::process::id());
        let bundle = self.tmp.path().join("bundles").join(&id);
        let upper = self.tmp.path().join("upper").join(&id);
        let cgroup = format!("{CGROUP_PARENT}/{id}");
        let argv: Vec<&str> = self.command.iter().map(String::as_str).collect();
        raw::write_bundle(&bundle, &self.rootfs, &argv, &cgroup)
            .map_err(|e| format!("cannot write the bundle {}: {e}", bundle.display()))?;
        std::fs::create_dir_all(&upper).map_err(|e| format!("cannot make {}: {e}", upper.display()))?;
        let overlay = tartarus_hecatoncheir::runtime::gvisor::overlay_flag(&self.info, &upper);
        let state = self.tmp.path().join("state");
        let run = RawRun {
            runsc: &self.info.path,
            root: &state,
            platform: self.platform,
            overlay: Some(overlay),
            bundle: &bundle,
            id: &id,
            limit: RUN_LIMIT,
        };
        let outcome = run.run().await;
        let _ = std::fs::remove_dir_all(&bundle);
        let _ = std::fs::remove_dir_all(&upper);
        raw::remove_cgroup(&cgroup);
        match outcome.failure {
            Some(f) => Err(f),
            None if self.expect.as_ref().is_some_and(|e| outcome.stdout.trim() != e) => {
                Err(format!("printed {:?} instead of {:?}", outcome.stdout, self.expect))
            }
            None => Ok(outcome.elapsed),
        }
    }

    /// One raw restore of the snapshot as the realm does it: `runsc restore` in the foreground
    /// with a door (a FIFO) as stdin, the command given to the waiting hatch through it, timed
    /// to the exit; the sandbox is deleted afterwards, untimed.
    async fn restore_once(&self, label: &str) -> Result<Duration, String> {
        let image = self.image.as_ref().ok_or("no snapshot to restore")?;
        let raw = self.raw_sandbox(label, "r", true)?;
        let door = raw.dir.join("door");
        nix::unistd::mkfifo(&door, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| format!("cannot make {}: {e}", door.display()))?;
        let env = tartarus_hecatoncheir::runtime::env_list([&std::collections::BTreeMap::new()]);
        let path = tartarus_hecatoncheir::runtime::path_of(&env);
        let program = tartarus_hecatoncheir::rootfs::find_program(&self.rootfs, &self.command[0], path, "/")
            .ok_or_else(|| format!("{:?} is not an executable in the template", self.command[0]))?;
        let order = tartarus_hecatoncheir::hatch::Order {
            program,
            cwd: "/".into(),
            argv: self.command.clone(),
            env,
            keeps_door: false,
        };
        let mut args = raw.flags.clone();
        args.extend(["restore".into(), format!("--image-path={}", image.display())]);
        args.extend(["--bundle".into(), raw.bundle.display().to_string(), raw.id.clone()]);
        let started = Instant::now();
        let result = async {
            let stdin = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&door)
                .map_err(|e| format!("cannot open {}: {e}", door.display()))?;
            // A file, as in the realm: the checkpoint's stdout was one (a restored process keeps
            // writing to it as to a file, which a pipe would refuse).
            let log = raw.dir.join("stdout.log");
            let stdout = std::fs::File::create(&log).map_err(|e| format!("cannot make {}: {e}", log.display()))?;
            let mut child = tokio::process::Command::new(&self.info.path)
                .args(&args)
                .stdin(stdin)
                .stdout(stdout)
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("cannot run runsc restore: {e}"))?;
            tartarus_hecatoncheir::hatch::give(&door, &order).await.map_err(|e| format!("the door: {e}"))?;
            let status = tokio::time::timeout(RUN_LIMIT, child.wait())
                .await
                .map_err(|_| "runsc restore ran too long".to_owned())?
                .map_err(|e| format!("runsc restore: {e}"))?;
            let elapsed = started.elapsed();
            let printed = std::fs::read(&log).unwrap_or_default();
            self.check(status.success(), "runsc restore", status, &printed).map(|()| elapsed)
        }
        .await;
        self.remove_raw(&raw).await;
        result
    }

    /// One raw `runsc exec` of the command into a session sandbox booted beforehand (untimed):
    /// the floor of the pool path, which runs the command in a sandbox kept ready. The sandbox
    /// is deleted afterwards, untimed.
    async fn exec_once(&self, label: &str) -> Result<Duration, String> {
        let raw = self.raw_sandbox(label, "e", false)?;
        let mut start = raw.flags.clone();
        start.extend(["run".into(), "-detach".into(), "--bundle".into(), raw.bundle.display().to_string()]);
        start.push(raw.id.clone());
        let root = ["--root".to_owned(), raw.state.display().to_string()];
        let runsc = |args: &[String]| {
            let mut c = tokio::process::Command::new(&self.info.path);
            c.args(args).stdin(std::process::Stdio::null());
            c
        };
        // Detached sandboxes inherit stdout and stderr: never pipes, which would not close.
        let up = runsc(&start).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status().await;
        let result = match up {
            Ok(s) if s.success() => {
                let mut exec: Vec<String> = root.to_vec();
                exec.extend(["exec".into(), raw.id.clone()]);
                exec.extend(self.command.iter().cloned());
                let started = Instant::now();
                let out = runsc(&exec).output().await;
                let elapsed = started.elapsed();
                match out {
                    Ok(o) => self.check(o.status.success(), "runsc exec", o.status, &o.stdout).map(|()| elapsed),
                    Err(e) => Err(format!("cannot run runsc exec: {e}")),
                }
            }
            Ok(s) => Err(format!("runsc run -detach {s}")),
            Err(e) => Err(format!("cannot run runsc run -detach: {e}")),
        };
        self.remove_raw(&raw).await;
        result
    }

    /// Whether a raw run succeeded and printed what was expected.
    fn check(&self, ok: bool, what: &str, status: std::process::ExitStatus, stdout: &[u8]) -> Result<(), String> {
        let printed = String::from_utf8_lossy(stdout);
        match &self.expect {
            _ if !ok => Err(format!("{what} {status}")),
            Some(e) if printed.trim() != e => Err(format!("printed {printed:?} instead of {e:?}")),
            _ => Ok(()),
        }
    }

    /// A raw sandbox's bundle (a session's, or with `door` a hatch's), writable layer and flags,
    /// made ready (untimed).
    fn raw_sandbox(&self, label: &str, kind: &str, door: bool) -> Result<RawSandbox, String> {
        let id = format!("tartarus-bench-{}-{kind}{label}", std::process::id());
        let dir = self.tmp.path().join("raw").join(&id);
        let bundle = self.tmp.path().join("bundles").join(&id);
        let upper = dir.join("upper");
        let cgroup = format!("{CGROUP_PARENT}/{id}");
        raw::write_session_bundle(&bundle, &self.rootfs, door, &cgroup)
            .map_err(|e| format!("cannot write the bundle {}: {e}", bundle.display()))?;
        std::fs::create_dir_all(&upper).map_err(|e| format!("cannot make {}: {e}", upper.display()))?;
        let state = self.tmp.path().join("state");
        let overlay = tartarus_hecatoncheir::runtime::gvisor::overlay_flag(&self.info, &upper);
        let flags = tartarus_hecatoncheir::runtime::gvisor::sandbox_flags(&state, self.platform, None, Some(overlay));
        Ok(RawSandbox { id, dir, bundle, state, cgroup, flags })
    }

    /// Kills and deletes a raw sandbox and removes its files and cgroup (untimed).
    async fn remove_raw(&self, raw: &RawSandbox) {
        // Killed first: deleting a running sandbox can take runsc's whole 5 s timeout.
        let root = ["--root".to_owned(), raw.state.display().to_string()];
        for args in [vec!["kill", "--all", &raw.id, "KILL"], vec!["delete", "--force", &raw.id]] {
            let args: Vec<String> = root.iter().cloned().chain(args.into_iter().map(String::from)).collect();
            let _ = tokio::process::Command::new(&self.info.path)
                .args(&args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .await;
        }
        let _ = std::fs::remove_dir_all(&raw.bundle);
        let _ = std::fs::remove_dir_all(&raw.dir);
        raw::remove_cgroup(&raw.cgroup);
    }
}

/// One raw sandbox of the bench: names and paths.
struct RawSandbox {
    id: String,
    /// Its own files (writable layer, door).
    dir: PathBuf,
    bundle: PathBuf,
    /// runsc's state root.
    state: PathBuf,
    cgroup: String,
    /// The global runsc flags shaping it (state root, platform, network, overlay).
    flags: Vec<String>,
}

/// One sandbox through the realm, waiting for its end; its time, or why it failed (also when
/// it was not launched the way `path` measures).
async fn tartarus_once(client: &Client, soul: &SoulRequest, path: From) -> Result<Duration, String> {
    let start = Instant::now();
    let rec = client.create(soul, true).await.map_err(|e| format!("{e:#}"))?;
    let elapsed = start.elapsed();
    let from = rec.launched_from.as_deref().unwrap_or_default();
    match (rec.state, rec.exit_code) {
        (SandboxState::Exited, Some(0)) if path == From::Pool && !from.starts_with("pool ") => {
            Err(format!("sandbox {} not served from the pool (launched from {from})", rec.id))
        }
        (SandboxState::Exited, Some(0)) => Ok(elapsed),
        _ => Err(format!("sandbox {} {}", rec.id, rec.outcome())),
    }
}

/// Waits (untimed, at most a minute) until template `name`'s pool has a sandbox ready.
async fn pool_ready(client: &Client, name: &str) -> anyhow::Result<()> {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, pools) = client.templates_and_pools().await?;
        if pools.get(name).is_some_and(|p| p.ready > 0) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < give_up, "the warm pool of {name} has no sandbox ready after a minute");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start(a: StartArgs, g: &Global) -> anyhow::Result<i32> {
    let client = Client::new(g)?;
    let templates = client.templates().await.context("cannot list the realm's templates")?;
    let template = templates
        .into_iter()
        .find(|t| t.name.as_str() == a.template)
        .with_context(|| format!("the realm has no template {:?} (see `tartarus template ls`)", a.template))?;
    anyhow::ensure!(
        template.rootfs.is_dir(),
        "the rootfs of template {} ({}) is not on this machine: run bench on the realm's host",
        template.name,
        template.rootfs.display()
    );
    let explicit = a.runsc.clone();
    let info = tokio::task::spawn_blocking(move || RunscInfo::probe(explicit.as_deref()))
        .await?
        .map_err(anyhow::Error::msg)?;
    let platform = match Platform::parse(&a.platform).map_err(anyhow::Error::msg)? {
        Some(p) => p,
        None => raw::default_platform(&info),
    };
    let tmp =
        tempfile::Builder::new().prefix("tartarus-bench-").tempdir().context("cannot make a temporary directory")?;
    let command: Vec<String> = if a.command.is_empty() { vec!["echo".into(), "hi".into()] } else { a.command.clone() };
    let expect = a.command.is_empty().then(|| "hi".to_owned());
    let mut from = a.from.clone();
    from.dedup();
    let warming = tartarus_core::Warming {
        command: a.warm_command.as_ref().map(|w| vec!["sh".into(), "-c".into(), w.clone()]),
        preload: a.preload.clone(),
    };
    let warms = warming != tartarus_core::Warming::default();
    // The templates each path runs: copies where the path needs one (removed at the end).
    let mut copies: Vec<String> = Vec::new();
    let mut paths: Vec<(From, String)> = Vec::new();
    let mut image = None;
    let result = async {
        for f in &from {
            let name = match f {
                From::Cold if template.snapshot.is_none() => template.name.to_string(),
                From::Cold | From::Snapshot | From::Pool => {
                    let kind = match f {
                        From::Cold => "cold",
                        From::Snapshot => "snap",
                        From::Pool => "pool",
                    };
                    let name = format!("bench-{kind}-{}", std::process::id());
                    eprintln!("bench: copying template {} as {name}", template.name);
                    client.import_template(&name, &template.rootfs).await.context("cannot copy the template")?;
                    copies.push(name.clone());
                    name
                }
            };
            if *f == From::Snapshot {
                eprintln!("bench: warming {name}");
                let snap = client
                    .warm_template(&name, &warming)
                    .await
                    .context("cannot warm the bench's copy of the template")?;
                let dir = g.data_dir.join("nyx").join(&snap.id).join("image");
                anyhow::ensure!(
                    dir.is_dir(),
                    "the snapshot's checkpoint is not at {}: run bench on the realm's host with its --data-dir",
                    dir.display()
                );
                image = Some(dir);
            }
            if *f == From::Pool {
                if warms {
                    eprintln!("bench: warming {name} for its pool");
                    client.warm_template(&name, &warming).await.context("cannot warm the bench's pool template")?;
                }
                client.set_pool(&name, 2).await.context("cannot give the bench's copy a warm pool")?;
                eprintln!("bench: waiting for {name}'s warm pool");
                pool_ready(&client, &name).await?;
            }
            paths.push((*f, name));
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = result {
        remove_copies(&client, &copies).await;
        return Err(e);
    }
    let setup =
        RawSetup { info, platform, rootfs: template.rootfs.clone(), tmp, command: command.clone(), expect, image };
    let soul_of = |t: &str| SoulRequest {
        template: t.to_owned(),
        command: Some(command.clone()),
        max_duration: Some(HumanDuration(RUN_LIMIT)),
        ..SoulRequest::default()
    };
    eprintln!(
        "bench: {command:?} in template {}: realm at {} ({}) vs runsc {} ({}), platform {}, {} runs each after {WARM_UP} warm-up rounds",
        template.name,
        client.base(),
        paths.iter().map(|(f, _)| f.label()).collect::<Vec<_>>().join(", "),
        setup.info.version,
        setup.info.path.display(),
        platform.as_str(),
        a.n
    );
    let restores = from.contains(&From::Snapshot);
    let execs = from.contains(&From::Pool);
    // With --network: a sink in a namespace of the bench's own, and the cold path's template
    // run with egress allowed to it.
    let sink = match a.network {
        Some(NetworkBench::Egress) => Some(network::Sink::start().context("setting up the bench's network sink")?),
        None => None,
    };
    let networked = |t: &str, cmd: Vec<String>| {
        let mut soul = soul_of(t);
        soul.command = Some(cmd);
        if let Some(s) = &sink {
            soul.network.egress = vec![tartarus_core::network::EgressRule {
                cidr: tartarus_core::network::Cidr::host(s.address),
                ports: Vec::new(),
                protocol: None,
            }];
        }
        soul
    };
    let cold_template =
        paths.iter().find(|(f, _)| *f == From::Cold).map_or(template.name.to_string(), |(_, t)| t.clone());
    // Samples per contender: the realm's paths (and the networked one), then runsc-run,
    // runsc-restore, runsc-exec.
    let mut samples: Vec<(&'static str, Vec<f64>, u32)> =
        paths.iter().map(|(f, _)| (f.label(), Vec::new(), 0)).collect();
    if sink.is_some() {
        samples.push(("tartarus-network", Vec::new(), 0));
    }
    samples.push(("runsc-run", Vec::new(), 0));
    if restores {
        samples.push(("runsc-restore", Vec::new(), 0));
    }
    if execs {
        samples.push(("runsc-exec", Vec::new(), 0));
    }
    for round in 0..WARM_UP + a.n {
        let measured = round >= WARM_UP;
        let mut line = Vec::new();
        let mut results = Vec::new();
        for (f, t) in &paths {
            if *f == From::Pool {
                pool_ready(&client, t).await?;
            }
            results.push(tartarus_once(&client, &soul_of(t), *f).await);
        }
        if sink.is_some() {
            results.push(tartarus_once(&client, &networked(&cold_template, command.clone()), From::Cold).await);
        }
        results.push(setup.once(&round.to_string()).await);
        if restores {
            results.push(setup.restore_once(&round.to_string()).await);
        }
        if execs {
            results.push(setup.exec_once(&round.to_string()).await);
        }
        for (k, res) in results.into_iter().enumerate() {
            let (name, ms_list, fails) = &mut samples[k];
            line.push(match &res {
                Ok(d) => format!("{name} {:.1} ms", ms(*d)),
                Err(e) => format!("{name} FAILED ({e})"),
            });
            if measured {
                match res {
                    Ok(d) => ms_list.push(ms(d)),
                    Err(_) => *fails += 1,
                }
            }
        }
        let tag = if measured { format!("{}/{}", round + 1 - WARM_UP, a.n) } else { format!("warm-up {}", round + 1) };
        eprintln!("bench: {tag}: {}", line.join(", "));
    }
    let mut transfer = None;
    if let Some(s) = &sink {
        eprintln!("bench: sending {} MiB from a networked sandbox to the sink", network::TRANSFER_BYTES >> 20);
        let cmd = vec!["sh".to_owned(), "-c".to_owned(), s.transfer_script()];
        match tartarus_once(&client, &networked(&cold_template, cmd), From::Cold).await {
            Err(e) => eprintln!("bench: the transfer failed: {e}"),
            Ok(_) => match s.last(Duration::from_secs(30)) {
                Some((bytes, took)) if bytes == network::TRANSFER_BYTES => {
                    let seconds = took.as_secs_f64();
                    let mb_per_s = round3(bytes as f64 / 1e6 / seconds.max(1e-9));
                    transfer = Some(Transfer { bytes, seconds: round3(seconds), mb_per_s });
                }
                other => eprintln!("bench: the sink received {other:?}, not {} bytes", network::TRANSFER_BYTES),
            },
        }
    }
    drop(sink);
    raw::remove_cgroup(CGROUP_PARENT);
    remove_copies(&client, &copies).await;
    let failures: u32 = samples.iter().map(|(_, _, f)| f).sum();
    let results: Vec<Summary> = samples.into_iter().map(|(name, v, f)| summarize(name, a.n, v, f)).collect();
    let mut report = report(results);
    report.transfer = transfer;
    match a.output {
        Format::Json => println!("{}", serde_json::to_string(&report)?),
        Format::Table => print!("{}", render(&report)),
    }
    Ok(if failures > 0 { 1 } else { 0 })
}

/// Removes the bench's template copies (their snapshots' artifacts go with `template prune`).
async fn remove_copies(client: &Client, names: &[String]) {
    for n in names {
        if let Err(e) = client.remove_template(n).await {
            eprintln!("bench: could not remove the bench template {n}: {e:#}");
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The `p`th percentile (nearest rank) of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Percentiles and mean of the successful runs' latencies (ms).
fn summarize(name: &'static str, n: u32, mut samples: Vec<f64>, failures: u32) -> Summary {
    samples.sort_by(f64::total_cmp);
    let mean = (!samples.is_empty()).then(|| samples.iter().sum::<f64>() / samples.len() as f64);
    let p = |q| percentile(&samples, q).map(round3);
    Summary { name, n, p50_ms: p(50.0), p95_ms: p(95.0), p99_ms: p(99.0), mean_ms: mean.map(round3), failures }
}

fn report(results: Vec<Summary>) -> Report {
    let p50 = |name: &str| results.iter().find(|s| s.name == name).and_then(|s| s.p50_ms);
    let first = results.first().and_then(|s| s.p50_ms);
    let (ratio, overhead) = match (first, p50("runsc-run")) {
        (Some(t), Some(r)) if r > 0.0 => (Some(round3(t / r)), Some(round3(t - r))),
        (Some(t), Some(r)) => (None, Some(round3(t - r))),
        _ => (None, None),
    };
    let cold_over = |other: &str| match (p50(other), p50("tartarus-cold")) {
        (Some(s), Some(c)) if s > 0.0 => Some(round3(c / s)),
        _ => None,
    };
    Report {
        cold_over_snapshot_p50: cold_over("tartarus-snapshot"),
        cold_over_pool_p50: cold_over("tartarus-pool"),
        pool_overhead_p50_ms: p50("tartarus-pool").zip(p50("runsc-exec")).map(|(p, e)| round3(p - e)),
        network_overhead_p50_ms: p50("tartarus-network").zip(p50("tartarus-cold")).map(|(n, c)| round3(n - c)),
        transfer: None,
        results,
        ratio_p50: ratio,
        overhead_p50_ms: overhead,
    }
}

fn render(r: &Report) -> String {
    let cell = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    let rows: Vec<Vec<String>> = r
        .results
        .iter()
        .map(|s| {
            vec![
                s.name.to_owned(),
                s.n.to_string(),
                cell(s.p50_ms),
                cell(s.p95_ms),
                cell(s.p99_ms),
                cell(s.mean_ms),
                s.failures.to_string(),
            ]
        })
        .collect();
    let mut out = output::table(&["NAME", "N", "P50 ms", "P95 ms", "P99 ms", "MEAN ms", "FAILURES"], &rows);
    out.push_str(&format!(
        "p50 ratio {}, overhead {} ms\n",
        r.ratio_p50.map_or("-".to_owned(), |v| format!("{v:.2}")),
        cell(r.overhead_p50_ms)
    ));
    out
}

// --- bench pull ----------------------------------------------------------------------------

/// Timings of one `bench pull` contender.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct PullSummary {
    name: &'static str,
    n: u32,
    p50_ms: Option<f64>,
    /// Layer bytes over the p50 (not for the warm build, which fetches nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    mb_per_s: Option<f64>,
    failures: u32,
}

#[derive(Debug, Serialize)]
struct PullReport {
    results: Vec<PullSummary>,
    /// tartarus-pull p50 over skopeo-umoci p50.
    ratio_p50: Option<f64>,
    /// Sum of the manifest's layer sizes (compressed).
    image_bytes: u64,
    layers: u64,
    /// Whether the tartarus builds made ext4 images (never: skopeo and umoci make none).
    ext4: bool,
    /// Whether every measured cold round fetched every blob (nothing cached).
    cold_verified: bool,
}

/// What one template build through the realm showed in its progress events.
#[derive(Debug, Default)]
struct BuildRun {
    elapsed: Duration,
    /// Layer bytes and count, from the `resolved` step.
    bytes: u64,
    layers: u64,
    /// Blobs fetched, and blobs found in the store.
    fetched: u32,
    cached: u32,
    /// The unpacked image was reused.
    reused: bool,
}

/// Builds template `name` from `image` (no ext4 image) and waits for the outcome.
async fn build_once(client: &Client, name: &str, image: &str, insecure: bool) -> Result<BuildRun, String> {
    let body = serde_json::json!({"name": name, "image": image, "insecure": insecure, "ext4": false});
    let start = Instant::now();
    let mut events = client.build_template(&body).await.map_err(|e| format!("{e:#}"))?;
    let mut run = BuildRun::default();
    while let Some(ev) = events.next().await {
        let ev = ev.map_err(|e| format!("{e:#}"))?;
        let data: serde_json::Value = serde_json::from_str(&ev.data).unwrap_or_default();
        match ev.event.as_str() {
            "progress" => match data["step"].as_str() {
                Some("resolved") => {
                    run.bytes = data["bytes"].as_u64().unwrap_or(0);
                    run.layers = data["layers"].as_u64().unwrap_or(0);
                }
                Some("blob") if data["cached"] == true => run.cached += 1,
                Some("blob") => run.fetched += 1,
                Some("reused") => run.reused = true,
                _ => {}
            },
            "template" => {
                run.elapsed = start.elapsed();
                return Ok(run);
            }
            "error" => {
                return Err(format!(
                    "{}: {}",
                    data["code"].as_str().unwrap_or("error"),
                    data["message"].as_str().unwrap_or(&ev.data)
                ))
            }
            _ => {}
        }
    }
    Err("the build's event stream ended without an outcome".into())
}

/// Removes the bench's templates that exist, then prunes.
async fn clear(client: &Client, names: &mut Vec<String>) -> anyhow::Result<()> {
    for name in names.drain(..) {
        if let Err(e) = client.remove_template(&name).await {
            // Gone already (a failed build registers nothing) is fine; anything else is not.
            if client.template(&name).await.is_ok() {
                return Err(e.context(format!("cannot remove bench template {name}")));
            }
        }
    }
    client.prune_templates().await.context("cannot prune the realm's templates")?;
    Ok(())
}

/// The plain tools' side: `skopeo copy` to an OCI layout, then `umoci unpack` of it.
struct PlainPull {
    skopeo: PathBuf,
    umoci: PathBuf,
    tmp: tempfile::TempDir,
}

impl PlainPull {
    async fn once(&self, image: &str, insecure: bool, label: &str) -> Result<Duration, String> {
        let dir = self.tmp.path().join(label);
        let layout = format!("{}:bench", dir.join("oci").display());
        let mut copy = tokio::process::Command::new(&self.skopeo);
        // A local benchmark image: no signature policy to consult.
        copy.args(["--insecure-policy", "copy", "--quiet"]);
        if insecure {
            copy.arg("--src-tls-verify=false");
        }
        copy.arg(format!("docker://{image}")).arg(format!("oci:{layout}"));
        let mut unpack = tokio::process::Command::new(&self.umoci);
        unpack.arg("unpack");
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            unpack.arg("--rootless");
        }
        unpack.args(["--image", &layout]).arg(dir.join("bundle"));
        // skopeo wants the layout's parent to exist.
        tokio::fs::create_dir_all(&dir).await.map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
        let start = Instant::now();
        let outcome = async {
            run_tool(copy, "skopeo copy").await?;
            run_tool(unpack, "umoci unpack").await
        }
        .await;
        let elapsed = start.elapsed();
        let _ = tokio::fs::remove_dir_all(&dir).await;
        outcome.map(|()| elapsed)
    }
}

async fn run_tool(mut cmd: tokio::process::Command, what: &str) -> Result<(), String> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(format!("{what} failed ({}): {}", out.status, stderr.trim().lines().last().unwrap_or_default()))
}

/// Writes back what earlier steps left dirty in the page cache, so no timed step pays for the
/// one before it (the realm fsyncs every blob it stores, which would flush their data too).
async fn settle() {
    let _ = tokio::task::spawn_blocking(nix::unistd::sync).await;
}

/// `name` in PATH (or the usual bin directories).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/bin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p: &PathBuf| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

async fn pull(a: PullArgs, g: &Global) -> anyhow::Result<i32> {
    let image = a.image.trim().to_owned();
    anyhow::ensure!(
        !image.starts_with("oci:") && !image.starts_with("docker-archive:"),
        "--image must be in a registry (HOST[:PORT]/REPO[:TAG]): skopeo pulls it with docker://"
    );
    let tool = |name: &str| {
        find_tool(name)
            .with_context(|| format!("{name} is not installed (apt-get install {name}): bench pull compares with it"))
    };
    let tmp = tempfile::Builder::new()
        .prefix("tartarus-bench-pull-")
        .tempdir()
        .context("cannot make a temporary directory")?;
    let plain = PlainPull { skopeo: tool("skopeo")?, umoci: tool("umoci")?, tmp };
    let client = Client::new(g)?;
    client.templates().await.context("cannot list the realm's templates")?;
    eprintln!(
        "bench: pulling {image}: realm at {} (cold: after rm + prune, ext4 off; warm: cached) vs skopeo copy + umoci unpack, \
         {} rounds after {} warm-up rounds",
        client.base(),
        a.n,
        a.warm_up
    );

    let prefix = format!("bench-pull-{}", std::process::id());
    let mut ours: Vec<String> = Vec::new();
    let (mut cold_ms, mut plain_ms, mut warm_ms) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cold_fail, mut plain_fail, mut warm_fail) = (0u32, 0u32, 0u32);
    let (mut bytes, mut layers, mut cold_verified) = (0u64, 0u64, true);
    let show = |res: &Result<Duration, String>| match res {
        Ok(d) => format!("{:.0} ms", ms(*d)),
        Err(e) => format!("FAILED ({e})"),
    };
    for round in 1..=a.warm_up + a.n {
        let measured = round > a.warm_up;
        let label = if measured { format!("{}/{}", round - a.warm_up, a.n) } else { format!("warm-up {round}") };

        // (a) cold: nothing of this image left in the realm.
        clear(&client, &mut ours).await?;
        settle().await;
        let cold_name = format!("{prefix}-c{round}");
        ours.push(cold_name.clone());
        let cold = build_once(&client, &cold_name, &image, a.insecure).await;
        if let Ok(run) = &cold {
            (bytes, layers) = (run.bytes, run.layers);
            if run.cached > 0 || run.reused {
                if measured {
                    cold_verified = false;
                }
                eprintln!(
                    "bench: {label}: the cold build was not cold: {} blobs were in the store{} (another template \
                     of the realm uses this image or its layers: remove it for a cold measurement)",
                    run.cached,
                    if run.reused { ", unpacked image reused" } else { "" }
                );
            }
        }
        let cold = cold.map(|r| r.elapsed);

        // (b) the plain tools, in between.
        settle().await;
        let plain_run = plain.once(&image, a.insecure, &format!("r{round}")).await;

        // (c) warm: the same image again, nothing pruned.
        let warm_name = format!("{prefix}-w{round}");
        ours.push(warm_name.clone());
        settle().await;
        let warm = build_once(&client, &warm_name, &image, a.insecure).await;
        if let Ok(run) = &warm {
            if !run.reused {
                eprintln!("bench: {label}: the warm build did not reuse the unpacked image");
            }
        }
        let warm = warm.map(|r| r.elapsed);

        eprintln!(
            "bench: {label}: tartarus-pull {}, skopeo-umoci {}, tartarus-warm {}",
            show(&cold),
            show(&plain_run),
            show(&warm)
        );
        if !measured {
            continue;
        }
        for (res, samples, fails) in [
            (cold, &mut cold_ms, &mut cold_fail),
            (plain_run, &mut plain_ms, &mut plain_fail),
            (warm, &mut warm_ms, &mut warm_fail),
        ] {
            match res {
                Ok(d) => samples.push(ms(d)),
                Err(_) => *fails += 1,
            }
        }
    }
    clear(&client, &mut ours).await?;

    let report = pull_report(
        [
            ("tartarus-pull", cold_ms, cold_fail),
            ("skopeo-umoci", plain_ms, plain_fail),
            ("tartarus-warm", warm_ms, warm_fail),
        ],
        a.n,
        bytes,
        layers,
        cold_verified,
    );
    match a.output {
        Format::Json => println!("{}", serde_json::to_string(&report)?),
        Format::Table => print!("{}", render_pull(&report)),
    }
    Ok(if cold_fail + plain_fail + warm_fail > 0 { 1 } else { 0 })
}

/// The report of `bench pull` from each contender's samples (ms) and failures.
fn pull_report(
    contenders: [(&'static str, Vec<f64>, u32); 3],
    n: u32,
    image_bytes: u64,
    layers: u64,
    cold_verified: bool,
) -> PullReport {
    let results: Vec<PullSummary> = contenders
        .into_iter()
        .map(|(name, mut samples, failures)| {
            samples.sort_by(f64::total_cmp);
            let p50_ms = percentile(&samples, 50.0).map(round3);
            let mb_per_s = match (name, p50_ms) {
                ("tartarus-warm", _) | (_, None) => None,
                (_, Some(p)) if p > 0.0 => Some(round3(image_bytes as f64 / 1e6 / (p / 1000.0))),
                _ => None,
            };
            PullSummary { name, n, p50_ms, mb_per_s, failures }
        })
        .collect();
    let ratio = match (results[0].p50_ms, results[1].p50_ms) {
        (Some(t), Some(s)) if s > 0.0 => Some(round3(t / s)),
        _ => None,
    };
    PullReport { results, ratio_p50: ratio, image_bytes, layers, ext4: false, cold_verified }
}

fn render_pull(r: &PullReport) -> String {
    let cell = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    let rows: Vec<Vec<String>> = r
        .results
        .iter()
        .map(|s| vec![s.name.to_owned(), s.n.to_string(), cell(s.p50_ms), cell(s.mb_per_s), s.failures.to_string()])
        .collect();
    let mut out = output::table(&["NAME", "N", "P50 ms", "MB/s", "FAILURES"], &rows);
    out.push_str(&format!(
        "image {} in {} layers; p50 ratio tartarus/skopeo-umoci {} (ext4 off)\n",
        output::bytes(r.image_bytes),
        r.layers,
        r.ratio_p50.map_or("-".to_owned(), |v| format!("{v:.2}"))
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 95.0), Some(95.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn summaries_and_report_shape() {
        let t = summarize("tartarus-cold", 4, vec![40.0, 10.0, 30.0, 20.0], 0);
        assert_eq!((t.p50_ms, t.p99_ms, t.mean_ms), (Some(20.0), Some(40.0), Some(25.0)));
        let r = summarize("runsc-run", 4, vec![8.0, 8.0, 8.0], 1);
        let s = summarize("tartarus-snapshot", 4, vec![5.0, 5.0, 4.0, 6.0], 0);
        let json = serde_json::to_string(&report(vec![t, s, r])).unwrap();
        assert_eq!(
            json,
            r#"{"results":[{"name":"tartarus-cold","n":4,"p50_ms":20.0,"p95_ms":40.0,"p99_ms":40.0,"mean_ms":25.0,"failures":0},{"name":"tartarus-snapshot","n":4,"p50_ms":5.0,"p95_ms":6.0,"p99_ms":6.0,"mean_ms":5.0,"failures":0},{"name":"runsc-run","n":4,"p50_ms":8.0,"p95_ms":8.0,"p99_ms":8.0,"mean_ms":8.0,"failures":1}],"ratio_p50":2.5,"overhead_p50_ms":12.0,"cold_over_snapshot_p50":4.0}"#
        );
        let empty = report(vec![summarize("tartarus-cold", 1, vec![], 1), summarize("runsc-run", 1, vec![1.0], 0)]);
        assert_eq!((empty.ratio_p50, empty.overhead_p50_ms), (None, None));
    }

    #[test]
    fn pull_report_shape() {
        let r = pull_report(
            [
                ("tartarus-pull", vec![3000.0, 1000.0, 2000.0], 0),
                ("skopeo-umoci", vec![4000.0, 4000.0], 1),
                ("tartarus-warm", vec![50.0, 40.0, 60.0], 0),
            ],
            3,
            200_000_000,
            3,
            true,
        );
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"results":[{"name":"tartarus-pull","n":3,"p50_ms":2000.0,"mb_per_s":100.0,"failures":0},{"name":"skopeo-umoci","n":3,"p50_ms":4000.0,"mb_per_s":50.0,"failures":1},{"name":"tartarus-warm","n":3,"p50_ms":50.0,"failures":0}],"ratio_p50":0.5,"image_bytes":200000000,"layers":3,"ext4":false,"cold_verified":true}"#
        );
        let failed = pull_report(
            [("tartarus-pull", vec![], 3), ("skopeo-umoci", vec![1.0], 0), ("tartarus-warm", vec![], 3)],
            3,
            0,
            0,
            true,
        );
        assert_eq!((failed.ratio_p50, failed.results[0].mb_per_s), (None, None));
        assert!(render_pull(&failed).contains("tartarus-pull"));
    }
}
