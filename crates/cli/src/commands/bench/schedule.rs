//! `tartarus bench schedule`: admissions/s, create latency and scheduling decisions/s of the control plane.
//!
//! The bench measures a realm of its own, made of child processes of this very binary (one
//! `olympus`, N `agent`s) on the Redis it is given, under a fresh key prefix `bench-<random hex>`:
//! a run never touches a real realm sharing that Redis, nor another run. With simulated launches
//! (the default) the agents start nothing — each sandbox is recorded running, then exited — so the
//! figures are those of the API, the judges, Acheron, the Moirai and the Redis store, not gVisor's.
//!
//! Admission and placement are asynchronous to each other (a 202 only means "queued"), so they are
//! measured separately: admissions from the requests' answers, placements from the Olympus's own
//! placement counter in `/metrics`, sampled while the requests run.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde::Serialize;
use tartarus_core::{HumanDuration, NodeState};
use tokio::process::{Child, Command};

use super::{ms, percentile, round3};
use crate::args;
use crate::client::Client;
use crate::commands::Global;
use crate::output::{self, Format};

/// How long a child may take to say where it listens, and the agents to show up alive.
const READY_LIMIT: Duration = Duration::from_secs(60);
/// How long the placements may take to catch up after the last admission.
const PLACE_LIMIT: Duration = Duration::from_secs(120);
/// How often Olympus's counters are sampled.
const POLL: Duration = Duration::from_millis(50);
/// How long a child gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The longest one create may take.
const REQUEST_LIMIT: Duration = Duration::from_secs(30);
/// The template the bench registers and creates its sandboxes from.
const TEMPLATE: &str = "bench-schedule";
/// Olympus's count of its placement decisions.
const PLACEMENTS: &str = "tartarus_moirai_placements_total";
/// Olympus's count of ended sandboxes (by final state).
const ENDED: &str = "tartarus_sandboxes_ended_total";
/// What the control plane should sustain on a 2-core machine.
const TARGET: Target = Target { admissions_per_s: 2000, p99_ms: 20, agents: 3 };

/// How the agents launch what they are given.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// Start nothing: record each sandbox running, then exited after --simulated-duration.
    Simulated,
    /// Start real gVisor sandboxes of `true` from the --rootfs template.
    Real,
}

/// Arguments of `bench schedule`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  mkdir -p /tmp/benchredis
  redis-server --port 6399 --save '' --appendonly yes --dir /tmp/benchredis --daemonize yes
  sudo tartarus bench schedule --redis redis://127.0.0.1:6399 --agents 3 -n 5000
  sudo tartarus bench schedule --redis redis://127.0.0.1:6399 -n 20000 --concurrency 64 -o table
  sudo tartarus bench schedule --redis redis://127.0.0.1:6399 --launch real --rootfs /srv/busybox -n 50

The bench starts its own realm as children of this binary: one `tartarus olympus` and --agents
`tartarus agent`s on 127.0.0.1 ports of the system's choosing, their data dirs in a temporary
directory and every Redis key under a fresh prefix `bench-<random hex>:`, so it never touches a
realm already using that Redis. Simulated launches (the default) start no sandbox: each agent
records a sandbox running, then exited after --simulated-duration, so the figures are the control
plane's (API, judges, Acheron, Moirai, Redis store), not gVisor's.

Measured, after --warm-up untimed creates have been admitted and placed:
  admissions/s   creates answered 202 over the wall time from the first request sent to the last
                 answer read, --concurrency requests in flight over one keep-alive HTTP client
  latency        of each admitted create, request sent to answer read (ms): p50, p95, p99, max
  decisions/s    admitted creates over the time from the first request until Olympus's
                 tartarus_moirai_placements_total (sampled every 50 ms) has grown by as many;
                 queue_drain_ms is how much of that came after the last admission
The target, >= 2000 admissions/s with a p99 <= 20 ms, is \"met\" only with >= 3 agents and no
failed create. The bench shares the machine with the realm and Redis, as a client would not.

At the end the children are stopped (they die with the bench, even when it is killed) and the
prefix's keys deleted; --keep leaves both and prints where they are. The children log at RUST_LOG
(default info), as a deployed realm does. Must run as root (Olympus and agents do). Progress goes
to stderr, the result to stdout. Exit code 1 when any measured create failed or the placements
did not catch up within 120 s.")]
pub struct ScheduleArgs {
    /// Redis for the bench's realm (its keys go under a prefix of their own).
    #[arg(long, env = "TARTARUS_REDIS", value_name = "URL")]
    pub redis: String,
    /// Agents (nodes) to start; the target counts with 3 or more.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub agents: u32,
    /// Measured creates.
    #[arg(short = 'n', long = "requests", value_name = "N", default_value_t = 5000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub n: u32,
    /// Creates in flight at once.
    #[arg(long, value_name = "C", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// Untimed creates first (connections, caches, Redis scripts).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub warm_up: u32,
    /// How the agents launch sandboxes.
    #[arg(long, value_enum, default_value_t = Launch::Simulated)]
    pub launch: Launch,
    /// How long a simulated sandbox "runs".
    #[arg(long, value_name = "DURATION", value_parser = args::duration, default_value = "100ms")]
    pub simulated_duration: HumanDuration,
    /// With --launch real: a root filesystem directory with `true` on its PATH (e.g. busybox's),
    /// registered as the bench's template.
    #[arg(long, value_name = "DIR", required_if_eq("launch", "real"))]
    pub rootfs: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Json)]
    pub output: Format,
    /// Leave the realm's processes, data dirs and Redis keys for inspection.
    #[arg(long)]
    pub keep: bool,
}

/// Runs the bench: starts the realm, measures, stops the realm whatever happened (even Ctrl-C).
pub async fn execute(a: ScheduleArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "bench schedule starts olympus and agents, which must run as root; try sudo"
    );
    let rootfs = match (&a.launch, &a.rootfs) {
        (Launch::Real, Some(dir)) => {
            let dir = std::fs::canonicalize(dir).with_context(|| format!("--rootfs {}", dir.display()))?;
            anyhow::ensure!(dir.is_dir(), "--rootfs {} is not a directory", dir.display());
            Some(dir)
        }
        (Launch::Real, None) => bail!("--launch real needs --rootfs DIR"),
        (Launch::Simulated, _) => None,
    };
    ping_redis(&a.redis).await?;
    let exe = std::env::current_exe().context("cannot locate the tartarus binary to start the realm with")?;
    let root = tempfile::Builder::new()
        .prefix("tartarus-bench-schedule-")
        .tempdir()
        .context("cannot make a temporary directory")?;
    let mut realm = Realm {
        exe,
        root,
        daemons: Vec::new(),
        redis: a.redis.clone(),
        prefix: format!("bench-{:016x}", random_u64()),
        keep: a.keep,
    };
    let outcome = tokio::select! {
        r = measure(&a, &mut realm, rootfs.as_deref()) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let outcome = outcome.map_err(|e| match realm.casualties() {
        Some(dead) => e.context(dead),
        None => e,
    });
    realm.finish().await;
    let (report, complete) = outcome?;
    match a.output {
        Format::Json => println!("{}", serde_json::to_string(&report)?),
        Format::Table => print!("{}", render(&report)),
    }
    Ok(if report.failures > 0 || !complete { 1 } else { 0 })
}

/// Starts the realm, warms it up and measures; the report, and whether every admitted create
/// was placed in time.
async fn measure(a: &ScheduleArgs, realm: &mut Realm, rootfs: Option<&Path>) -> anyhow::Result<(ScheduleReport, bool)> {
    let launch = match a.launch {
        Launch::Simulated => format!(
            "simulated: agents record each sandbox running then exited after {}; no sandbox is started",
            humantime::format_duration(a.simulated_duration.0)
        ),
        Launch::Real => {
            format!("real: gVisor sandboxes of `true` in {}", rootfs.map_or("-".into(), |r| r.display().to_string()))
        }
    };
    eprintln!(
        "bench: starting a realm under Redis prefix {}: one olympus and {} agents ({launch})",
        realm.prefix, a.agents
    );
    let ready_by = Instant::now() + READY_LIMIT;
    // Every sandbox of the run may be live at once (all queued, say): neither the tenant's quota
    // nor a node's slots may be what limits the run.
    let most = u64::from(a.n) + u64::from(a.warm_up) + 100;
    let olympus_dir = realm.dir("olympus");
    let api = realm
        .start(
            "olympus",
            &[
                "olympus",
                "--redis",
                &a.redis,
                "--redis-prefix",
                &realm.prefix.clone(),
                "--listen",
                "127.0.0.1:0",
                "--name",
                "bench-olympus",
                "--max-live",
                &most.to_string(),
            ],
            ready_by,
        )
        .await?;
    let token = std::fs::read_to_string(olympus_dir.join("admin.token"))
        .context("cannot read the bench olympus's admin token")?
        .trim()
        .to_owned();
    let secret = olympus_dir.join("agent.secret");
    let nodes: Vec<String> = (1..=a.agents).map(|i| format!("bench-a{i}")).collect();
    for node in &nodes {
        let mut args: Vec<String> = [
            "agent",
            "--olympus",
            &api,
            "--redis",
            &a.redis,
            "--redis-prefix",
            &realm.prefix,
            "--node-id",
            node,
            "--listen",
            "127.0.0.1:0",
            "--agent-secret-file",
            secret.to_str().context("the temporary directory's path is not UTF-8")?,
            // Capacity is not what is measured: every sandbox of the run fits on any node.
            "--memory",
            "10000000",
            "--vcpus",
            "1000000",
            "--slots",
            &most.to_string(),
        ]
        .map(str::to_owned)
        .into();
        if a.launch == Launch::Simulated {
            args.push("--simulate-launch".into());
            args.push(format!("{}ms", a.simulated_duration.0.as_millis().max(1)));
        }
        realm.spawn(&format!("agent {node}"), node, &args)?;
    }
    for i in 1..realm.daemons.len() {
        realm.address(i, ready_by).await?;
    }
    let client = Client::new(&Global { api: api.clone(), token: Some(token.clone()), data_dir: olympus_dir })?;
    until_alive(&client, &nodes, ready_by).await?;
    eprintln!("bench: olympus at {api}; agents {} alive", nodes.join(", "));

    let template_dir = match rootfs {
        Some(dir) => dir.to_owned(),
        None => {
            // Simulated launches never look inside: an empty root filesystem will do.
            let dir = realm.root.path().join("template-rootfs");
            std::fs::create_dir_all(dir.join("bin")).with_context(|| format!("cannot make {}", dir.display()))?;
            dir
        }
    };
    client.import_template(TEMPLATE, &template_dir).await.context("cannot register the bench's template")?;
    let body = serde_json::json!({"template": TEMPLATE, "command": ["true"]}).to_string();
    let http = reqwest::Client::builder()
        .timeout(REQUEST_LIMIT)
        .pool_max_idle_per_host(a.concurrency as usize)
        .build()
        .context("cannot build the HTTP client")?;
    let realm_api = RealmApi { http, api, token, body };

    let mut admitted_total = 0u64;
    if a.warm_up > 0 {
        eprintln!("bench: warm-up: {} creates, {} at a time", a.warm_up, a.concurrency);
        let warm = realm_api.create_many(a.warm_up, a.concurrency).await;
        if let Some((kind, count)) = warm.failures.iter().next() {
            bail!("{count} of {} warm-up creates failed: {kind}", a.warm_up);
        }
        admitted_total += warm.latencies_ms.len() as u64;
        // Measured placements must not include the warm-up's.
        let placed_by = Instant::now() + PLACE_LIMIT;
        while realm_api.counter(PLACEMENTS).await? < admitted_total {
            anyhow::ensure!(Instant::now() < placed_by, "the warm-up's sandboxes were not placed within 120 s");
            tokio::time::sleep(POLL).await;
        }
    }

    let load_1m = load_average();
    eprintln!(
        "bench: measuring: {} creates, {} at a time (load average {})",
        a.n,
        a.concurrency,
        load_1m.map_or("unknown".to_owned(), |l| format!("{l:.2}"))
    );
    let baseline = realm_api.counter(PLACEMENTS).await?;
    let want = Arc::new(AtomicU64::new(u64::from(a.n)));
    let seen = Arc::new(AtomicU64::new(0));
    // In a set, so that it stops when this future is dropped (Ctrl-C) or returns.
    let mut poller = tokio::task::JoinSet::new();
    poller.spawn(realm_api.clone().until_placed(baseline, want.clone(), seen.clone()));
    let creates = realm_api.create_many(a.n, a.concurrency).await;
    let admitted = creates.latencies_ms.len() as u64;
    admitted_total += admitted;
    want.store(admitted, Ordering::SeqCst);
    let placed_at = match tokio::time::timeout(PLACE_LIMIT, poller.join_next()).await {
        Ok(joined) => Some(joined.context("the placement poller is gone")?.context("the placement poller failed")?),
        Err(_) => None,
    };
    let placed = seen.load(Ordering::SeqCst);
    let complete = placed_at.is_some();
    eprintln!(
        "bench: {admitted} of {} creates admitted in {:.2} s; {}",
        a.n,
        (creates.last - creates.first).as_secs_f64(),
        match placed_at {
            Some(t) =>
                format!("all placed {:.0} ms after the last admission", ms(t.saturating_duration_since(creates.last))),
            None => format!("only {placed} placed within 120 s of the last admission"),
        }
    );
    if a.launch == Launch::Real {
        // Stopping the agents leaves their sandboxes running: let them end first.
        let ended_by = Instant::now() + PLACE_LIMIT;
        while realm_api.counter(ENDED).await.unwrap_or(0) < admitted_total {
            if Instant::now() >= ended_by {
                eprintln!("bench: not every sandbox ended within 120 s; some may be left running");
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        let exited = realm_api.counter(&format!("{ENDED}{{state=\"exited\"}}")).await.unwrap_or(0);
        eprintln!("bench: {exited} of the {admitted_total} sandboxes (warm-up included) exited; the rest failed or were killed");
    }
    let measured = Measured {
        latencies_ms: creates.latencies_ms,
        failures: creates.failures,
        wall: creates.last - creates.first,
        placed,
        placed_after: placed_at.map(|t| t - creates.first),
        drain: placed_at.map(|t| t.saturating_duration_since(creates.last)),
    };
    let setup = Setup {
        launch,
        agents: a.agents,
        requests: a.n,
        concurrency: a.concurrency,
        warm_up: a.warm_up,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get() as u32),
        load_1m,
    };
    Ok((schedule_report(setup, measured), complete))
}

/// Waits until every one of `nodes` is alive in Hades.
async fn until_alive(client: &Client, nodes: &[String], deadline: Instant) -> anyhow::Result<()> {
    loop {
        let missing: Vec<&String> = match client.nodes().await {
            Ok(seen) => nodes
                .iter()
                .filter(|n| !seen.iter().any(|v| &v.info.name == *n && v.state == NodeState::Alive))
                .collect(),
            Err(_) => nodes.iter().collect(),
        };
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("agents {missing:?} were not alive in Hades within {} s", READY_LIMIT.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// --- the realm's processes ------------------------------------------------------------------

/// The bench's realm: its processes, their files, and its Redis prefix.
struct Realm {
    exe: PathBuf,
    root: tempfile::TempDir,
    /// The olympus first, then the agents.
    daemons: Vec<Daemon>,
    redis: String,
    prefix: String,
    keep: bool,
}

/// One process of the realm; its stdout and stderr go to files beside its data dir.
struct Daemon {
    what: String,
    child: Child,
    out: PathBuf,
    log: PathBuf,
}

impl Realm {
    fn dir(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// Starts `tartarus --data-dir <root>/<name> ARGS`.
    fn spawn(&mut self, what: &str, name: &str, args: &[String]) -> anyhow::Result<()> {
        let (out, log) = (self.dir(&format!("{name}.out")), self.dir(&format!("{name}.log")));
        let file = |p: &Path| File::create(p).with_context(|| format!("cannot create {}", p.display()));
        let mut cmd = Command::new(&self.exe);
        cmd.arg("--data-dir")
            .arg(self.dir(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(file(&out)?)
            .stderr(file(&log)?)
            // Its own process group: a Ctrl-C at the terminal reaches the bench alone, which then
            // stops the realm in order (and leaves it alone with --keep).
            .process_group(0)
            .kill_on_drop(!self.keep);
        if !self.keep {
            // Killed with the bench even when the bench cannot clean up (SIGKILL, a panic). The
            // signal follows the thread that spawned the child: the bench's main thread or a
            // runtime worker, both alive as long as the bench.
            // SAFETY: prctl is async-signal-safe and changes only the new process.
            unsafe {
                cmd.pre_exec(|| match libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) {
                    -1 => Err(std::io::Error::last_os_error()),
                    _ => Ok(()),
                });
            }
        }
        let child = cmd.spawn().with_context(|| format!("cannot start {what} ({})", self.exe.display()))?;
        self.daemons.push(Daemon { what: what.to_owned(), child, out, log });
        Ok(())
    }

    /// Starts a daemon and waits for its address.
    async fn start(&mut self, name: &str, args: &[&str], deadline: Instant) -> anyhow::Result<String> {
        self.spawn(name, name, &args.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        self.address(self.daemons.len() - 1, deadline).await
    }

    /// Waits for daemon `i`'s `listening on URL` line; the URL.
    async fn address(&mut self, i: usize, deadline: Instant) -> anyhow::Result<String> {
        let d = &mut self.daemons[i];
        loop {
            let out = tokio::fs::read_to_string(&d.out).await.unwrap_or_default();
            if let Some(url) = listening_url(&out) {
                return Ok(url);
            }
            if let Some(status) = d.child.try_wait()? {
                bail!("{} exited ({status}) before listening: {}", d.what, log_tail(&d.log));
            }
            if Instant::now() >= deadline {
                bail!("{} did not listen within {} s: {}", d.what, READY_LIMIT.as_secs(), log_tail(&d.log));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Which daemons have died, with the end of their logs.
    fn casualties(&mut self) -> Option<String> {
        let dead: Vec<String> = self
            .daemons
            .iter_mut()
            .filter_map(|d| {
                let status = d.child.try_wait().ok().flatten()?;
                Some(format!("{} exited ({status}): {}", d.what, log_tail(&d.log)))
            })
            .collect();
        (!dead.is_empty()).then(|| dead.join("; "))
    }

    /// Stops the processes, deletes the Redis keys and the files; or, with --keep, says where
    /// they are.
    async fn finish(self) {
        if self.keep {
            let root = self.root.keep();
            eprintln!(
                "bench: --keep: the realm runs on, Redis keys under {}:, files in {}",
                self.prefix,
                root.display()
            );
            for d in &self.daemons {
                eprintln!("bench:   {} pid {} (log {})", d.what, d.child.id().unwrap_or(0), d.log.display());
            }
            let pids: Vec<String> = self.daemons.iter().filter_map(|d| d.child.id()).map(|p| p.to_string()).collect();
            eprintln!(
                "bench: to clean up: kill {}; redis-cli -u URL --scan --pattern '{}:*' | xargs redis-cli -u URL unlink; rm -r {}",
                pids.join(" "),
                self.prefix,
                root.display()
            );
            return;
        }
        futures::future::join_all(self.daemons.into_iter().map(Daemon::stop)).await;
        match delete_keys(&self.redis, &self.prefix).await {
            Ok(n) => eprintln!("bench: realm stopped; {n} Redis keys under {}: deleted", self.prefix),
            Err(e) => eprintln!(
                "bench: realm stopped, but its Redis keys under {}: are left: {e:#} \
                 (redis-cli --scan --pattern '{}:*' | xargs redis-cli unlink)",
                self.prefix, self.prefix
            ),
        }
    }
}

impl Daemon {
    /// SIGTERM, then SIGKILL after [`STOP_GRACE`].
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        if tokio::time::timeout(STOP_GRACE, self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// The URL of a daemon's `tartarus: ... listening on URL` line.
fn listening_url(stdout: &str) -> Option<String> {
    stdout.lines().find_map(|l| {
        let url = l.split_once("listening on ")?.1.split_whitespace().next()?;
        url.starts_with("http").then(|| url.to_owned())
    })
}

/// The last lines of a log, on one line.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    match lines.len() {
        0 => "(nothing logged)".to_owned(),
        n => lines[n.saturating_sub(5)..].join(" | "),
    }
}

async fn ping_redis(url: &str) -> anyhow::Result<()> {
    let ping = async {
        let client = redis::Client::open(url)?;
        let mut con = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut con).await
    };
    match tokio::time::timeout(Duration::from_secs(10), ping).await {
        Ok(Ok(_)) => Ok(()),
        // The client's error repeats its cause in its message: shown once.
        Ok(Err(e)) => bail!("cannot reach Redis at --redis: {e}"),
        Err(_) => bail!("Redis at --redis did not answer within 10 s"),
    }
}

/// Deletes every key under `prefix:`; how many there were.
async fn delete_keys(url: &str, prefix: &str) -> anyhow::Result<u64> {
    let work = async {
        let client = redis::Client::open(url)?;
        let mut con = client.get_multiplexed_async_connection().await?;
        // The prefix is ours (`bench-` and hex digits): nothing in it is a glob character.
        let pattern = format!("{prefix}:*");
        let (mut cursor, mut deleted) = (0u64, 0u64);
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut con)
                .await?;
            if !keys.is_empty() {
                deleted += redis::cmd("UNLINK").arg(&keys).query_async::<u64>(&mut con).await?;
            }
            if next == 0 {
                return Ok::<_, redis::RedisError>(deleted);
            }
            cursor = next;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), work)
        .await
        .context("Redis did not answer within 60 s")?
        .map_err(Into::into)
}

/// The 1-minute load average: anything else running skews the figures.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .expect("/dev/urandom");
    u64::from_le_bytes(b)
}

// --- the requests ---------------------------------------------------------------------------

/// What the bench sends to the realm's Olympus.
#[derive(Clone)]
struct RealmApi {
    http: reqwest::Client,
    api: String,
    token: String,
    /// The create request's JSON.
    body: String,
}

/// What a batch of creates gave.
struct Creates {
    /// Of the admitted ones.
    latencies_ms: Vec<f64>,
    /// Failed creates by kind (`HTTP 429 quota_exceeded`, `timeout`, ...).
    failures: BTreeMap<String, u32>,
    /// The first request was sent.
    first: Instant,
    /// The last answer was read.
    last: Instant,
}

impl RealmApi {
    /// `n` creates, `concurrency` in flight at once, each timed from send to answer read.
    async fn create_many(&self, n: u32, concurrency: u32) -> Creates {
        let next = Arc::new(AtomicU32::new(0));
        let first = Instant::now();
        // A set: dropping it (Ctrl-C) stops the workers.
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..concurrency.min(n) {
            let (this, next) = (self.clone(), next.clone());
            workers.spawn(async move {
                let (mut latencies, mut failures, mut last) = (Vec::new(), BTreeMap::new(), first);
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let sent = Instant::now();
                    let outcome = this.create().await;
                    let answered = Instant::now();
                    last = last.max(answered);
                    match outcome {
                        Ok(()) => latencies.push(ms(answered - sent)),
                        Err(kind) => *failures.entry(kind).or_insert(0u32) += 1,
                    }
                }
                (latencies, failures, last)
            });
        }
        let mut all =
            Creates { latencies_ms: Vec::with_capacity(n as usize), failures: BTreeMap::new(), first, last: first };
        while let Some(w) = workers.join_next().await {
            let (latencies, failures, last) =
                w.unwrap_or_else(|e| (Vec::new(), [(format!("worker: {e}"), 1)].into(), first));
            all.latencies_ms.extend(latencies);
            for (kind, count) in failures {
                *all.failures.entry(kind).or_insert(0) += count;
            }
            all.last = all.last.max(last);
        }
        all
    }

    /// One `POST /v1/sandboxes`; why it failed, if it did.
    async fn create(&self) -> Result<(), String> {
        let sent = self
            .http
            .post(format!("{}/v1/sandboxes", self.api))
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(self.body.clone())
            .send()
            .await
            .map_err(|e| transport_failure(&e))?;
        let status = sent.status();
        // Read to the end, so the connection goes back to the pool.
        let body = sent.bytes().await.map_err(|e| transport_failure(&e))?;
        match status {
            StatusCode::ACCEPTED => Ok(()),
            s => Err(failure_kind(s.as_u16(), &body)),
        }
    }

    /// The value of a counter in Olympus's `/metrics` (summed over its labels).
    async fn counter(&self, name: &str) -> anyhow::Result<u64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.api))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .context("cannot read the olympus's /metrics")?
            .text()
            .await
            .context("cannot read the olympus's /metrics")?;
        Ok(counter(&text, name).unwrap_or(0.0).round() as u64)
    }

    /// Samples the placement counter until it has grown from `from` by `want` (which may be
    /// lowered meanwhile, once the failed creates are known); when it had. `seen` is the growth
    /// so far. The moment is that of the answer, so late by at most one [`POLL`] and one
    /// request: decisions/s errs low, never high.
    async fn until_placed(self, from: u64, want: Arc<AtomicU64>, seen: Arc<AtomicU64>) -> Instant {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Ok(now) = self.counter(PLACEMENTS).await {
                let grown = now.saturating_sub(from);
                seen.store(grown, Ordering::SeqCst);
                if grown >= want.load(Ordering::SeqCst) {
                    return Instant::now();
                }
            }
        }
    }
}

fn transport_failure(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        format!("timeout (no answer within {} s)", REQUEST_LIMIT.as_secs())
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        format!("transport: {e}")
    }
}

/// `HTTP 429 quota_exceeded`: the status and the API error's stable code, if the body has one.
fn failure_kind(status: u16, body: &[u8]) -> String {
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(str::to_owned));
    match code {
        Some(code) => format!("HTTP {status} {code}"),
        None => format!("HTTP {status}"),
    }
}

/// The sum of a metric's samples in a Prometheus text exposition (`None` if it has none).
fn counter(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        // `name value` or `name{labels} value`, not `name_suffix ...`.
        let value = match rest.chars().next() {
            Some(' ') => rest,
            Some('{') => match rest.rfind('}') {
                Some(end) => &rest[end + 1..],
                None => continue,
            },
            _ => continue,
        };
        if let Some(v) = value.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

// --- the report -----------------------------------------------------------------------------

/// How the run was set up.
struct Setup {
    launch: String,
    agents: u32,
    requests: u32,
    concurrency: u32,
    warm_up: u32,
    cpus: u32,
    load_1m: Option<f64>,
}

/// What the measured phase gave.
struct Measured {
    latencies_ms: Vec<f64>,
    failures: BTreeMap<String, u32>,
    /// First request sent to last answer read.
    wall: Duration,
    /// Placements counted (of the measured creates).
    placed: u64,
    /// First request sent to every admitted create placed (`None`: not within the limit).
    placed_after: Option<Duration>,
    /// Last answer read to every admitted create placed.
    drain: Option<Duration>,
}

/// The figure the bench is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
struct Target {
    admissions_per_s: u32,
    p99_ms: u32,
    agents: u32,
}

/// Percentiles of the admitted creates' latencies, ms.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Latency {
    p50: Option<f64>,
    p95: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
}

#[derive(Debug, Serialize)]
struct ScheduleReport {
    bench: &'static str,
    launch: String,
    agents: u32,
    requests: u32,
    concurrency: u32,
    warm_up: u32,
    /// Cores of the machine the realm, Redis and the bench share.
    cpus: u32,
    /// Its 1-minute load average as the measured phase began.
    load_1m: Option<f64>,
    failures: u32,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    failure_kinds: BTreeMap<String, u32>,
    wall_s: f64,
    admissions_per_s: Option<f64>,
    create_latency_ms: Latency,
    placed: u64,
    scheduling_decisions_per_s: Option<f64>,
    queue_drain_ms: Option<f64>,
    target: Target,
    met: bool,
}

fn schedule_report(s: Setup, mut m: Measured) -> ScheduleReport {
    m.latencies_ms.sort_by(f64::total_cmp);
    let admitted = m.latencies_ms.len();
    let p = |q| percentile(&m.latencies_ms, q).map(round3);
    let latency = Latency { p50: p(50.0), p95: p(95.0), p99: p(99.0), max: m.latencies_ms.last().copied().map(round3) };
    let per_s = |d: Duration| (admitted > 0 && !d.is_zero()).then(|| round3(admitted as f64 / d.as_secs_f64()));
    let admissions_per_s = per_s(m.wall);
    let decisions_per_s = m.placed_after.and_then(per_s);
    let failures = m.failures.values().sum();
    let met = failures == 0
        && s.agents >= TARGET.agents
        && decisions_per_s.is_some()
        && admissions_per_s.is_some_and(|r| r >= f64::from(TARGET.admissions_per_s))
        && latency.p99.is_some_and(|p| p <= f64::from(TARGET.p99_ms));
    ScheduleReport {
        bench: "schedule",
        launch: s.launch,
        agents: s.agents,
        requests: s.requests,
        concurrency: s.concurrency,
        warm_up: s.warm_up,
        cpus: s.cpus,
        load_1m: s.load_1m,
        failures,
        failure_kinds: m.failures,
        wall_s: round3(m.wall.as_secs_f64()),
        admissions_per_s,
        create_latency_ms: latency,
        placed: m.placed,
        scheduling_decisions_per_s: decisions_per_s,
        queue_drain_ms: m.drain.map(|d| round3(ms(d))),
        target: TARGET,
        met,
    }
}

fn render(r: &ScheduleReport) -> String {
    let cell = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    let l = &r.create_latency_ms;
    let row = vec![
        r.agents.to_string(),
        r.requests.to_string(),
        r.concurrency.to_string(),
        r.failures.to_string(),
        cell(r.admissions_per_s),
        cell(l.p50),
        cell(l.p95),
        cell(l.p99),
        cell(l.max),
        cell(r.scheduling_decisions_per_s),
    ];
    let mut out = output::table(
        &[
            "AGENTS",
            "REQUESTS",
            "CONCURRENCY",
            "FAILURES",
            "ADMISSIONS/s",
            "P50 ms",
            "P95 ms",
            "P99 ms",
            "MAX ms",
            "DECISIONS/s",
        ],
        &[row],
    );
    for (kind, count) in &r.failure_kinds {
        out.push_str(&format!("failed: {count} × {kind}\n"));
    }
    out.push_str(&format!(
        "launch {}\n{} of {} placed; queue drained {} ms after the last admission\n\
         {} cpus shared by realm, Redis and bench; load average {} at the start\n",
        r.launch,
        r.placed,
        r.requests - r.failures,
        cell(r.queue_drain_ms),
        r.cpus,
        r.load_1m.map_or("unknown".to_owned(), |l| format!("{l:.2}"))
    ));
    out.push_str(&format!(
        "target >= {} admissions/s with p99 <= {} ms on >= {} agents: {}\n",
        r.target.admissions_per_s,
        r.target.p99_ms,
        r.target.agents,
        if r.met { "met" } else { "not met" }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "\
# HELP tartarus_moirai_placements_total Sandboxes placed on a node
# TYPE tartarus_moirai_placements_total counter
tartarus_moirai_placements_total 5100
# HELP tartarus_moirai_placements_total_extra a longer name
tartarus_moirai_placements_total_extra 7
# TYPE tartarus_sandboxes_ended_total counter
tartarus_sandboxes_ended_total{state=\"exited\"} 4000
tartarus_sandboxes_ended_total{state=\"killed\"} 2
tartarus_sandboxes_admitted_total 1e3
";

    #[test]
    fn counters_from_metrics_text() {
        assert_eq!(counter(METRICS, PLACEMENTS), Some(5100.0));
        assert_eq!(counter(METRICS, ENDED), Some(4002.0));
        assert_eq!(counter(METRICS, "tartarus_sandboxes_admitted_total"), Some(1000.0));
        assert_eq!(counter(METRICS, "tartarus_moirai"), None);
        assert_eq!(counter("", PLACEMENTS), None);
    }

    #[test]
    fn listening_lines() {
        let olympus = "tartarus: listening on http://127.0.0.1:40123\ntartarus: admin token in /d/admin.token\n";
        assert_eq!(listening_url(olympus).as_deref(), Some("http://127.0.0.1:40123"));
        let agent = "tartarus: agent bench-a1 listening on http://127.0.0.1:40999\ntartarus: runtime gvisor\n";
        assert_eq!(listening_url(agent).as_deref(), Some("http://127.0.0.1:40999"));
        assert_eq!(listening_url("tartarus: listening on "), None);
        assert_eq!(listening_url("tartarus: listen"), None);
    }

    #[test]
    fn failure_kinds() {
        assert_eq!(
            failure_kind(429, br#"{"code":"quota_exceeded","message":"tenant admin already has 5 live sandboxes"}"#),
            "HTTP 429 quota_exceeded"
        );
        assert_eq!(failure_kind(502, b"bad gateway"), "HTTP 502");
    }

    fn setup(agents: u32) -> Setup {
        Setup {
            launch: "simulated".into(),
            agents,
            requests: 4,
            concurrency: 2,
            warm_up: 0,
            cpus: 2,
            load_1m: Some(0.5),
        }
    }

    #[test]
    fn report_shape() {
        let m = Measured {
            latencies_ms: vec![4.0, 1.0, 3.0, 2.0],
            failures: BTreeMap::new(),
            wall: Duration::from_millis(2),
            placed: 4,
            placed_after: Some(Duration::from_millis(4)),
            drain: Some(Duration::from_millis(2)),
        };
        let r = schedule_report(setup(3), m);
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"bench":"schedule","launch":"simulated","agents":3,"requests":4,"concurrency":2,"warm_up":0,"cpus":2,"load_1m":0.5,"failures":0,"wall_s":0.002,"admissions_per_s":2000.0,"create_latency_ms":{"p50":2.0,"p95":4.0,"p99":4.0,"max":4.0},"placed":4,"scheduling_decisions_per_s":1000.0,"queue_drain_ms":2.0,"target":{"admissions_per_s":2000,"p99_ms":20,"agents":3},"met":true}"#
        );
        assert!(render(&r).contains("target >= 2000 admissions/s with p99 <= 20 ms on >= 3 agents: met"));
    }

    #[test]
    fn the_target_needs_three_agents_no_failure_and_every_placement() {
        let m = || Measured {
            latencies_ms: vec![1.0; 10],
            failures: BTreeMap::new(),
            wall: Duration::from_millis(1),
            placed: 10,
            placed_after: Some(Duration::from_millis(2)),
            drain: Some(Duration::ZERO),
        };
        assert!(schedule_report(setup(3), m()).met);
        assert!(!schedule_report(setup(2), m()).met);
        let failed = Measured { failures: [("HTTP 429 quota_exceeded".to_owned(), 1)].into(), ..m() };
        let r = schedule_report(setup(3), failed);
        assert_eq!((r.failures, r.met), (1, false));
        assert!(serde_json::to_string(&r).unwrap().contains(r#""failure_kinds":{"HTTP 429 quota_exceeded":1}"#));
        let unplaced = Measured { placed: 7, placed_after: None, drain: None, ..m() };
        let r = schedule_report(setup(3), unplaced);
        assert_eq!((r.scheduling_decisions_per_s, r.queue_drain_ms, r.met), (None, None, false));
        let slow = Measured { latencies_ms: vec![25.0; 10], ..m() };
        assert!(!schedule_report(setup(3), slow).met);
        let none = Measured { latencies_ms: vec![], placed: 0, ..m() };
        let r = schedule_report(setup(3), none);
        assert_eq!((r.admissions_per_s, r.create_latency_ms.p99, r.met), (None, None, false));
    }
}
