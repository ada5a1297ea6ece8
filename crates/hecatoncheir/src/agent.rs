//! The supervisor: launches sandboxes, watches each to its end, enforces limits, records outcomes.
//!
//! Each running sandbox has one supervising task here. It waits for the sandbox's shim to
//! end, and meanwhile enforces the deadline (Alecto), the idle timeout of sessions, and kill
//! requests; at the end it reads the exit status and the cgroup's accounting (an OOM kill
//! means the memory limit ended it), releases everything (Thanatos), wipes the writable layer
//! (Lethe) and records the outcome. Nothing about a running sandbox lives only in memory:
//! after a restart [`Hecatoncheir::adopt`] finds each one again through its shim, or
//! records it as lost.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tartarus_core::{
    signal_name, Capacity, ExecRequest, ExitInfo, KillOrder, KillReason, NodeInfo, OutputEvent, SandboxEvent,
    SandboxId, SandboxRecord, SandboxSpec, SandboxState, SandboxStats, SnapshotInfo, Stream, TemplateName,
    TemplateRecord, Termination, TerminationPhase, TerminationReason,
};
use tartarus_store::{Events, SandboxFilter, State, StoreError};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, instrument, warn};

use crate::lethe::SandboxDir;
use crate::rootfs;
use crate::runtime::{env_list, path_of, ExecSpec, LaunchSpec, Runtime, RuntimeError, RuntimeStatus};
use crate::shim::{is_shim_of, ShimExit, ShimHandle};
use crate::thanatos::{Dying, MortemHook};
use std::collections::BTreeMap;

/// After an exec's process has exited, how long its output may still drain (background children
/// can keep the pipes open forever).
const EXEC_DRAIN: Duration = Duration::from_millis(250);

/// Longest wait for a new session sandbox to become reachable by `exec`.
const READY_WAIT: Duration = Duration::from_secs(10);

/// The ids used when a sandbox's own user cannot be known.
const NOBODY: (u32, u32) = (65534, 65534);

/// Tisiphone warns once a sandbox's memory reaches this share of its limit, percent.
const MEMORY_WARNING_PERCENT: u64 = 85;

/// Longest a warm-up command may run.
const WARM_UP_LIMIT: Duration = Duration::from_secs(600);

/// How often Erinyes measures a sandbox's writable layer against its `disk_mib`.
const DISK_CHECK: Duration = Duration::from_secs(1);

/// How the agent is set up.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's name in Hades.
    pub node_name: String,
    /// Where sandbox directories live (`<data-dir>/sandboxes`).
    pub sandboxes_dir: PathBuf,
    /// The binary that provides `shim` (the `tartarus` binary itself).
    pub shim_exe: PathBuf,
    /// Cores offered to sandboxes.
    pub vcpus: u32,
    /// Memory offered to sandboxes, MiB.
    pub memory_mib: u64,
    /// Most sandboxes at once.
    pub slots: u32,
    /// Labels Lachesis matches requests' node selectors against.
    pub labels: BTreeMap<String, String>,
    /// Base URL of this agent's API, as Olympus reaches it (`None` inside `tartarus up`).
    pub address: Option<String>,
    /// Nyx's snapshot store on this node (`None`: sandboxes always boot cold).
    pub nyx: Option<crate::nyx::Nyx>,
    /// Where Hypnos keeps sleeping sandboxes' checkpoints (`None`: sandboxes here cannot sleep).
    pub hypnos: Option<crate::nyx::Nyx>,
    /// Styx's networking on this node (`None`: only sandboxes without network run here).
    pub styx: Option<Arc<crate::styx::Styx>>,
    /// FOR BENCHMARKS OF THE CONTROL PLANE ONLY: start no sandbox at all; record each as running,
    /// then as exited with code 0 after this long. Never used by tests or real realms.
    pub simulate_launch: Option<Duration>,
}

/// A request the agent could not carry out.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No such sandbox.
    #[error("no sandbox {0}")]
    NotFound(SandboxId),
    /// The sandbox is not running on this node (ended, queued, or elsewhere).
    #[error("sandbox {id} is {state}, not running")]
    NotRunning {
        /// The sandbox.
        id: SandboxId,
        /// Its state.
        state: &'static str,
    },
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// This node keeps no snapshots (it was started without a blob store).
    #[error("this node keeps no snapshots")]
    NoSnapshots,
    /// No such template.
    #[error("no template {0} (see `tartarus template ls`)")]
    NoTemplate(TemplateName),
    /// Warming a template failed.
    #[error("warming failed: {0}")]
    Warm(String),
    /// A pooled sandbox could not be made ready.
    #[error("warm pool: {0}")]
    Pool(String),
    /// A sandbox started ahead (snapshot, pool) could not be given its command at its door.
    #[error("giving the sandbox its command: {0}")]
    Door(#[source] std::io::Error),
    /// Hypnos could not put the sandbox to sleep or wake it.
    #[error("{0}")]
    CannotSleep(String),
    /// The sandbox does not expose that port (Charon).
    #[error("{0}")]
    NotExposed(String),
    /// The sandbox's exposed port did not answer properly (Charon).
    #[error("{0}")]
    Ferry(String),
}

/// Output of an `exec`, ending with [`OutputEvent::Exit`].
pub type ExecStream = mpsc::Receiver<OutputEvent>;

/// What [`Hecatoncheir::adopt`] found after a restart.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AdoptReport {
    /// Still running: watched again.
    pub adopted: Vec<SandboxId>,
    /// Ended while the agent was away: recorded from the shim's exit status.
    pub finished: Vec<SandboxId>,
    /// Gone without a trace: recorded as lost.
    pub lost: Vec<SandboxId>,
    /// Placed but never started: queued again.
    pub requeued: Vec<SandboxId>,
}

pub(crate) struct Live {
    kill: mpsc::UnboundedSender<KillOrder>,
    activity: Activity,
    settings: Arc<Settings>,
    takes: Capacity,
}

/// What a sandbox's processes run with: the request over its template's image defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    env: BTreeMap<String, String>,
    workdir: String,
    user: (u32, u32),
}

impl Settings {
    /// Resolves the settings of `spec` on `template` (an unknown image user is an error).
    pub fn of(spec: &SandboxSpec, template: &TemplateRecord) -> Result<Self, String> {
        let defaults = template.image.as_ref().map(|i| &i.defaults);
        let mut env: BTreeMap<String, String> = defaults
            .map(|d| {
                d.env.iter().filter_map(|e| e.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
            })
            .unwrap_or_default();
        env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let workdir =
            spec.workdir.clone().or_else(|| defaults.and_then(|d| d.working_dir.clone())).unwrap_or_else(|| "/".into());
        let user = match defaults.and_then(|d| d.user.as_deref()) {
            None => (0, 0),
            Some(u) => rootfs::lookup_user(&template.rootfs, u)
                .ok_or_else(|| format!("the image's user {u:?} is not in template {}'s /etc/passwd", template.name))?,
        };
        Ok(Self { env, workdir, user })
    }

    /// `KEY=VALUE` environment with `extra` on top.
    pub fn env(&self, extra: &BTreeMap<String, String>) -> Vec<String> {
        env_list([&self.env, extra])
    }
}

/// A sandbox of `template` with its defaults and a fresh id, its hatch waiting at its door, for the
/// agent's own use (warming, pools; `origin` names which in errors).
pub(crate) fn session_of(template: &TemplateRecord, origin: &str) -> Result<(Settings, LaunchSpec), AgentError> {
    let spec = tartarus_core::SoulRequest { template: template.name.to_string(), ..Default::default() }
        .validate(origin)
        .map_err(|e| AgentError::Warm(e.to_string()))?;
    let settings = Settings::of(&spec, template).map_err(AgentError::Warm)?;
    let launch = LaunchSpec {
        id: SandboxId::generate(),
        rootfs: template.rootfs.clone(),
        command: None,
        env: settings.env(&BTreeMap::new()),
        workdir: settings.workdir.clone(),
        user: settings.user,
        resources: spec.resources,
        netns: None,
        door: true,
    };
    Ok((settings, launch))
}

/// When a sandbox was last used, and how many `exec`s run in it now (idle only when none).
#[derive(Clone)]
pub(crate) struct Activity {
    last: Arc<Mutex<Instant>>,
    execs: Arc<std::sync::atomic::AtomicUsize>,
    /// Seen running by the runtime, so `exec` can reach it (a sandbox recorded as running may
    /// still be booting for a few milliseconds).
    ready: Arc<std::sync::atomic::AtomicBool>,
    /// Hypnos is putting it to sleep: the end of its main process is not its end.
    pub(crate) falling_asleep: Arc<std::sync::atomic::AtomicBool>,
}

impl Activity {
    fn new() -> Self {
        Self {
            last: Arc::new(Mutex::new(Instant::now())),
            execs: Default::default(),
            ready: Default::default(),
            falling_asleep: Default::default(),
        }
    }

    fn touch(&self) {
        *self.last.lock().expect("lock") = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        if self.execs.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        self.last.lock().expect("lock").elapsed()
    }
}

/// Marks one `exec` in flight for as long as it lives.
struct ExecGuard(Activity);

impl ExecGuard {
    fn new(a: Activity) -> Self {
        a.execs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        a.touch();
        Self(a)
    }
}

impl Drop for ExecGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.execs.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Held while a sandbox is being launched, so a second launch of it waits for the first.
type LaunchGate = Arc<tokio::sync::Mutex<()>>;

/// The node agent.
pub struct Hecatoncheir {
    pub(crate) cfg: AgentConfig,
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) state: State,
    events: Events,
    pub(crate) live: Mutex<HashMap<SandboxId, Live>>,
    /// Launches under way: one gate per sandbox (a second launch of it waits for the first),
    /// and what each will take once running.
    launching: Mutex<HashMap<SandboxId, (LaunchGate, Capacity)>>,
    exec_seq: std::sync::atomic::AtomicU64,
    started_at: DateTime<Utc>,
    /// Templates whose snapshot is being rebuilt.
    warming: Mutex<std::collections::HashSet<TemplateName>>,
    /// Thanatos's pre- and post-mortem hooks.
    hooks: Mutex<Vec<Arc<dyn MortemHook>>>,
    /// Warm pools: sandboxes ready to be handed over, by template.
    pub(crate) pools: Mutex<crate::pool::Pools>,
    /// Wakes the pool keeper (a pooled sandbox was taken).
    pub(crate) pool_wake: tokio::sync::Notify,
}

impl Hecatoncheir {
    /// An agent running sandboxes with `runtime`, recording into `state`.
    pub fn new(cfg: AgentConfig, runtime: Arc<dyn Runtime>, state: State, events: Events) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            runtime,
            state,
            events,
            live: Mutex::default(),
            launching: Mutex::default(),
            exec_seq: Default::default(),
            started_at: Utc::now(),
            warming: Mutex::default(),
            hooks: Mutex::default(),
            pools: Mutex::default(),
            pool_wake: tokio::sync::Notify::new(),
        })
    }

    /// The runtime in use.
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.cfg.node_name
    }

    /// Sandboxes running here now.
    pub fn running(&self) -> usize {
        self.live.lock().expect("lock").len()
    }

    /// The directory of sandbox `id` on this node.
    pub fn dir(&self, id: &SandboxId) -> SandboxDir {
        SandboxDir::new(&self.cfg.sandboxes_dir, id)
    }

    /// The sandboxes this node holds now: running, paused, or being launched.
    pub fn held(&self) -> Vec<SandboxId> {
        let mut ids: Vec<SandboxId> = self.live.lock().expect("lock").keys().cloned().collect();
        ids.extend(self.launching.lock().expect("lock").keys().cloned());
        ids.sort();
        ids.dedup();
        ids
    }

    /// What this node tells Hades: capacity, and what its sandboxes (launching ones included) take.
    pub fn node_info(&self) -> NodeInfo {
        let mut used = Capacity::default();
        {
            let live = self.live.lock().expect("lock");
            for l in live.values() {
                used = used.plus(l.takes);
            }
            for (id, (_, takes)) in self.launching.lock().expect("lock").iter() {
                if !live.contains_key(id) {
                    used = used.plus(*takes);
                }
            }
        }
        NodeInfo {
            name: self.cfg.node_name.clone(),
            address: self.cfg.address.clone(),
            runtimes: vec![self.runtime.name().into()],
            runtime_version: self.runtime.describe(),
            capacity: Capacity { vcpus: self.cfg.vcpus, memory_mib: self.cfg.memory_mib, slots: self.cfg.slots },
            used,
            holds: self.held(),
            labels: self.cfg.labels.clone(),
            started_at: self.started_at,
            heartbeat_at: Utc::now(),
            draining: false,
            pools: self.pools.lock().expect("lock").counts(),
        }
    }

    /// Streams sandbox `id`'s logs from this node's disk.
    pub fn logs(&self, id: &SandboxId, follow: bool) -> mpsc::Receiver<OutputEvent> {
        crate::hermes::logs(self.state.sandboxes.clone(), self.events.clone(), self.dir(id), id.clone(), follow)
    }

    /// Registers this node in `hades` and keeps its heartbeat fresh, every `every`. (`tartarus
    /// agent` runs this on a thread and Redis connection of its own, so a burst of launches on
    /// the agent's runtime never delays a heartbeat.)
    pub async fn heartbeats(self: Arc<Self>, hades: Arc<dyn tartarus_store::Hades>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            match hades.heartbeat(&self.node_info()).await {
                Ok(()) if failing => {
                    info!("heartbeats reach Hades again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    warn!(error = %error_chain(&e), "heartbeat failed; retrying");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    }

    /// Every `every`, lets go of sandboxes whose records say they are no longer this node's
    /// (marked lost while this node was unreachable, or placed elsewhere).
    pub async fn watch_disowned(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            self.release_disowned().await;
        }
    }

    /// Kills running sandboxes whose records ended or moved elsewhere without this node.
    pub async fn release_disowned(&self) {
        let held: Vec<SandboxId> = self.live.lock().expect("lock").keys().cloned().collect();
        for id in held {
            let disowned = match self.state.sandboxes.get(&id).await {
                Ok(Some(r)) => r.state.is_terminal() || r.node.as_deref() != Some(self.name()),
                Ok(None) => true,
                Err(_) => false,
            };
            if disowned {
                warn!(sandbox = %id, "its record no longer places it on this node (marked lost while unreachable?); killing it");
                self.kill(&id, KillReason::Requested);
            }
        }
    }

    /// Changes a record placed on this node and announces the change. A record placed elsewhere
    /// meanwhile (requeued by Olympus while this node was unreachable) is left as it is: the
    /// returned record says where it went.
    pub(crate) async fn record(
        &self,
        id: &SandboxId,
        mut change: impl FnMut(&mut SandboxRecord) + Send + 'static,
    ) -> Result<Option<SandboxRecord>, StoreError> {
        let me = self.cfg.node_name.clone();
        let guarded = move |r: &mut SandboxRecord| {
            if r.node.as_deref() == Some(me.as_str()) {
                change(r);
            }
        };
        let rec = self.state.sandboxes.update(id, Box::new(guarded)).await?;
        if let Some(r) = &rec {
            self.events.publish(r);
        }
        Ok(rec)
    }

    async fn fail(&self, id: &SandboxId, error: String) -> Result<(), StoreError> {
        warn!(sandbox = %id, %error, "sandbox failed");
        self.record(id, move |r| {
            r.state = SandboxState::Failed;
            r.error = Some(error.clone());
            r.ended_at = Some(Utc::now());
        })
        .await
        .map(drop)
    }

    /// Starts sandbox `id` (its record placed on this node). Returns once it runs, or once
    /// its failure is recorded; the error is only for failures to record. Idempotent: a launch
    /// of a sandbox already running here, or being launched, waits for that one and returns.
    #[instrument(skip(self), fields(sandbox = %id))]
    pub async fn launch(self: &Arc<Self>, id: &SandboxId) -> Result<(), AgentError> {
        let gate = {
            let mut launching = self.launching.lock().expect("lock");
            launching.entry(id.clone()).or_insert_with(|| (Arc::default(), Capacity::default())).0.clone()
        };
        let result = {
            let _turn = gate.lock().await;
            self.launch_once(id).await
        };
        let mut launching = self.launching.lock().expect("lock");
        if launching.get(id).is_some_and(|(g, _)| Arc::ptr_eq(g, &gate)) && Arc::strong_count(&gate) <= 2 {
            launching.remove(id);
        }
        result
    }

    async fn launch_once(self: &Arc<Self>, id: &SandboxId) -> Result<(), AgentError> {
        if self.live.lock().expect("lock").contains_key(id) {
            return Ok(()); // delivered twice: already running here
        }
        let rec = self.state.sandboxes.get(id).await?.ok_or_else(|| AgentError::NotFound(id.clone()))?;
        if rec.state != SandboxState::Starting || rec.node.as_deref() != Some(self.name()) {
            return Ok(()); // killed while queued, delivered twice, or placed elsewhere
        }
        let takes = Capacity::of_sandbox(rec.spec.resources.vcpus, rec.spec.resources.memory_mib);
        if let Some(entry) = self.launching.lock().expect("lock").get_mut(id) {
            entry.1 = takes;
        }
        if let Some(lasts) = self.cfg.simulate_launch {
            return self.simulate(id, takes, lasts).await;
        }
        let spec = &rec.spec;
        let Some(template) = self.state.templates.template(&spec.template).await? else {
            self.fail(id, format!("template {} does not exist (see `tartarus template ls`)", spec.template)).await?;
            return Ok(());
        };
        let settings = match Settings::of(spec, &template) {
            Ok(s) => s,
            Err(e) => {
                self.fail(id, e).await?;
                return Ok(());
            }
        };
        // The image's entrypoint comes before the request's command (Docker's semantics).
        let command = spec.command.as_ref().map(|c| {
            let entry = template.image.as_ref().and_then(|i| i.defaults.entrypoint.clone()).unwrap_or_default();
            entry.into_iter().chain(c.iter().cloned()).collect::<Vec<_>>()
        });
        let env = settings.env(&BTreeMap::new());
        let mut program = None;
        if let Some(argv) = &command {
            program = rootfs::find_program(&template.rootfs, &argv[0], path_of(&env), &settings.workdir);
            if program.is_none() {
                self.fail(
                    id,
                    format!("command not found: {:?} is not an executable in template {}", argv[0], spec.template),
                )
                .await?;
                return Ok(());
            }
        }
        let mut launch = LaunchSpec {
            id: id.clone(),
            rootfs: template.rootfs.clone(),
            command,
            env,
            workdir: settings.workdir.clone(),
            user: settings.user,
            resources: spec.resources,
            netns: None,
            door: false,
        };
        let dir = self.dir(id);
        if !spec.network.is_none() {
            // Styx: a namespace, an address and the contract's rules; such a sandbox boots cold
            // in its namespace (pooled and snapshot sandboxes have no network).
            let attached = match &self.cfg.styx {
                None => {
                    Err("this node has no sandbox networking (Styx could not set up its bridge; see `tartarus doctor`)"
                        .to_owned())
                }
                Some(styx) => styx.attach(id, &spec.network).await.map_err(|e| format!("network: {e}")),
            };
            let attached = match attached {
                Ok(a) => a,
                Err(e) => {
                    self.fail(id, e).await?;
                    return Ok(());
                }
            };
            launch.netns = Some(attached.netns.clone());
            let info = tartarus_core::network::NetworkInfo {
                address: attached.address.to_string(),
                mode: self.runtime.network_mode().into(),
                rules: attached.rules.clone(),
            };
            self.record(id, move |r| r.network = Some(info.clone())).await?;
            let started = async {
                let main = self.runtime.create(&launch, &dir).await?;
                self.runtime.start(&dir, &main, &self.cfg.shim_exe).await
            }
            .await;
            return self
                .launched(&rec, started.map_err(AgentError::from), takes, settings, &dir, Some("cold".into()))
                .await;
        }
        if let Some(sleep) = rec.sleep.clone() {
            // Hypnos's wake: the sandbox's own checkpoint, not a boot, with the bundle it was
            // started with (a door bundle when it came from a snapshot or a pool).
            let from = rec.launched_from.as_deref().unwrap_or("cold");
            launch.door = from.starts_with("snapshot") || from.starts_with("pool");
            let started = self.wake_here(&rec, &sleep, &launch, &dir).await;
            return self.launched(&rec, started, takes, settings, &dir, None).await;
        }
        let order = crate::hatch::Order::of(&launch, program);
        let (started, launched_from) = match self.serve_from_pool(&template, &launch, &order, &dir).await {
            Some((shim, from)) => (Ok(shim), from),
            None => {
                let (image, launched_from) = self.snapshot_for(&template).await;
                let started = async {
                    let Some(image) = &image else {
                        let main = self.runtime.create(&launch, &dir).await?;
                        return Ok(self.runtime.start(&dir, &main, &self.cfg.shim_exe).await?);
                    };
                    let main = self.runtime.restore(&launch, &dir, image).await?;
                    let shim = self.runtime.start(&dir, &main, &self.cfg.shim_exe).await?;
                    crate::hatch::give(&crate::hatch::door(&dir), &order).await.map_err(AgentError::Door)?;
                    Ok::<_, AgentError>(shim)
                }
                .await;
                (started, launched_from)
            }
        };
        self.launched(&rec, started, takes, settings, &dir, Some(launched_from)).await
    }

    /// The rest of a launch once the runtime was asked to start sandbox `rec` (`started`): on
    /// failure records why; else watches it, records it running (woken: with the time it slept,
    /// its checkpoint discarded) and hands it to its supervisor.
    async fn launched(
        self: &Arc<Self>,
        rec: &SandboxRecord,
        started: Result<ShimHandle, AgentError>,
        takes: Capacity,
        settings: Settings,
        dir: &SandboxDir,
        launched_from: Option<String>,
    ) -> Result<(), AgentError> {
        let id = &rec.id;
        let spec = &rec.spec;
        let waking = rec.sleep.clone();
        let mut shim = match started {
            Ok(shim) => shim,
            Err(e) => {
                let _ = self.runtime.destroy(id).await;
                let _ = crate::lethe::forget(dir).await;
                self.unplug(id).await;
                let verb = if waking.is_some() { "could not wake" } else { "could not start" };
                self.fail(id, format!("{verb}: {}", error_chain(&e))).await?;
                if let Some(sleep) = &waking {
                    self.discard_checkpoint(id, sleep).await;
                }
                return Ok(());
            }
        };
        if spec.is_session() || waking.is_some() {
            // A session is only useful once `exec` can reach it: wait until the runtime knows it.
            self.until_running(id, &mut shim).await;
        }
        let (kill_tx, kill_rx) = mpsc::unbounded_channel();
        let activity = Activity::new();
        let live = Live { kill: kill_tx, activity: activity.clone(), settings: Arc::new(settings), takes };
        self.live.lock().expect("lock").insert(id.clone(), live);
        let me = self.name().to_owned();
        let rec = self
            .record(id, move |r| {
                if r.state != SandboxState::Starting {
                    return;
                }
                r.state = SandboxState::Running;
                match r.sleep.take() {
                    Some(sleep) => {
                        let now = Utc::now();
                        let asleep = (now - sleep.slept_at).num_milliseconds().max(0) as u64;
                        r.slept_ms += asleep;
                        r.events.push(SandboxEvent {
                            at: now,
                            kind: "woke".into(),
                            message: format!(
                                "woke on {me} after {:.1} s asleep (slept on {})",
                                asleep as f64 / 1000.0,
                                sleep.node
                            ),
                        });
                    }
                    None => {
                        r.started_at = Some(Utc::now());
                        r.launched_from = launched_from.clone();
                    }
                }
            })
            .await?
            .ok_or_else(|| AgentError::NotFound(id.clone()))?;
        if rec.state != SandboxState::Running || rec.node.as_deref() != Some(self.name()) {
            // Killed, or given to another node, while it was starting here: it must not run.
            warn!(state = rec.state.as_str(), node = ?rec.node, "sandbox is no longer this node's to run; stopping it");
            self.live.lock().expect("lock").remove(id);
            let _ = self.runtime.kill(id, libc::SIGKILL, true).await;
            let _ = self.runtime.destroy(id).await;
            let _ = crate::lethe::forget(dir).await;
            self.unplug(id).await;
            return Ok(());
        }
        if let Some(sleep) = &waking {
            self.discard_checkpoint(id, sleep).await;
        }
        info!(pid = shim.pid(), woken = waking.is_some(), "sandbox running");
        tokio::spawn(self.clone().supervise(rec, shim, kill_rx, activity));
        Ok(())
    }

    /// The local checkpoint to restore a sandbox of `template` from, and how the launch will be
    /// described in its record. A stale snapshot is never used: it is rebuilt in the background.
    pub(crate) async fn snapshot_for(self: &Arc<Self>, template: &TemplateRecord) -> (Option<PathBuf>, String) {
        let Some(nyx) = &self.cfg.nyx else { return (None, "cold".into()) };
        match template.usable_snapshot(&self.runtime.describe()) {
            Ok(None) => (None, "cold".into()),
            Ok(Some(snap)) => match nyx.image(snap).await {
                Ok(image) => (Some(image), format!("snapshot {}", snap.id)),
                Err(e) => {
                    warn!(template = %template.name, snapshot = %snap.id, error = %error_chain(&e), "snapshot unavailable; booting cold");
                    (None, format!("cold (snapshot {} unavailable: {})", snap.id, error_chain(&e)))
                }
            },
            Err(why) => {
                let warming = template.snapshot.as_ref().map(tartarus_core::Warming::of).unwrap_or_default();
                let this = self.clone();
                let name = template.name.clone();
                if self.warming.lock().expect("lock").insert(name.clone()) {
                    info!(template = %name, reason = %why, "snapshot is stale; rebuilding it");
                    tokio::spawn(async move {
                        if let Err(e) = this.warm(&name, warming).await {
                            warn!(template = %name, error = %error_chain(&e), "rebuilding a stale snapshot failed");
                        }
                        this.warming.lock().expect("lock").remove(&name);
                    });
                }
                (None, format!("cold ({why}; refused, being rebuilt)"))
            }
        }
    }

    /// Nyx.Prepare: warms a sandbox of template `name` — starts it with its hatch waiting at its
    /// door, runs the warm-up command in it to its end, replaces the hatch with a resident Python
    /// that has imported the preloaded modules (if any), pauses it and checkpoints it — then
    /// stores the checkpoint as the template's snapshot, replacing any earlier one. Sandboxes
    /// restored from it wait at their door for their request's command.
    #[instrument(skip(self))]
    pub async fn warm(&self, name: &TemplateName, warming: tartarus_core::Warming) -> Result<SnapshotInfo, AgentError> {
        let nyx = self.cfg.nyx.as_ref().ok_or(AgentError::NoSnapshots)?;
        let started = std::time::Instant::now();
        let template =
            self.state.templates.template(name).await?.ok_or_else(|| AgentError::NoTemplate(name.clone()))?;
        warming.validate().map_err(AgentError::Warm)?;
        let (settings, launch) = session_of(&template, "nyx")?;
        let python = match warming.preload.is_empty() {
            true => None,
            false => {
                let found = rootfs::find_program(&template.rootfs, "python3", path_of(&launch.env), &settings.workdir);
                Some(found.ok_or_else(|| {
                    AgentError::Warm(format!("preloading needs python3, and template {name} has none on its PATH"))
                })?)
            }
        };
        let id = launch.id.clone();
        let dir = self.dir(&id);
        let snap_id = format!("snap-{}", &id.to_string()[3..]);
        let result = async {
            let main = self.runtime.create(&launch, &dir).await?;
            let mut shim = self.runtime.start(&dir, &main, &self.cfg.shim_exe).await?;
            self.until_running(&id, &mut shim).await;
            if let Some(argv) = &warming.command {
                self.warm_up(&id, &settings, argv, &dir).await?;
            }
            if let Some(python) = &python {
                let order = crate::hatch::resident_python(python, &warming.preload, &launch);
                crate::hatch::give(&crate::hatch::door(&dir), &order).await.map_err(AgentError::Door)?;
                self.resident_ready(&dir, &mut shim).await?;
            }
            self.runtime.pause(&id).await?;
            self.runtime.checkpoint(&id, &nyx.image_dir(&snap_id), true).await?;
            Ok::<_, AgentError>(())
        }
        .await;
        let _ = self.runtime.destroy(&id).await;
        let _ = crate::lethe::forget(&dir).await;
        if let Err(e) = result {
            nyx.forget(&snap_id).await;
            return Err(e);
        }
        let stored = match nyx.store(&snap_id).await {
            Ok(s) => s,
            Err(e) => {
                nyx.forget(&snap_id).await;
                return Err(AgentError::Warm(format!("storing the snapshot: {}", error_chain(&e))));
            }
        };
        nyx.complete(&snap_id).map_err(|e| AgentError::Warm(error_chain(&e)))?;
        let snap = SnapshotInfo {
            id: snap_id,
            template_content: template.content_id(),
            runtime: self.runtime.name().into(),
            runtime_version: self.runtime.describe(),
            artifact: stored.artifact.to_string(),
            size_bytes: stored.size_bytes,
            compressed_bytes: stored.compressed_bytes,
            warm_command: warming.command,
            preload: warming.preload,
            created_at: Utc::now(),
            took_ms: started.elapsed().as_millis() as u64,
        };
        // Recorded only if the template still has the content that was warmed.
        let mut current =
            self.state.templates.template(name).await?.ok_or_else(|| AgentError::NoTemplate(name.clone()))?;
        if current.content_id() != snap.template_content {
            nyx.forget(&snap.id).await;
            return Err(AgentError::Warm(format!("template {name} changed while it was being warmed; warm it again")));
        }
        let previous = current.snapshot.replace(snap.clone());
        self.state.templates.put_template(&current).await?;
        if let Some(p) = previous {
            nyx.forget(&p.id).await;
        }
        info!(template = %name, snapshot = %snap.id, bytes = snap.size_bytes, compressed = snap.compressed_bytes, took_ms = snap.took_ms, "snapshot made");
        Ok(snap)
    }

    /// Waits until the resident given to the sandbox in `dir` says it is ready (its imports done);
    /// fails with what it said if it ends first or takes longer than a warm-up may.
    async fn resident_ready(&self, dir: &SandboxDir, shim: &mut ShimHandle) -> Result<(), AgentError> {
        let deadline = tokio::time::Instant::now() + WARM_UP_LIMIT;
        loop {
            let said = tokio::fs::read(dir.stderr()).await.unwrap_or_default();
            let said = String::from_utf8_lossy(&said);
            if said.lines().any(|l| l == crate::hatch::RESIDENT_READY) {
                return Ok(());
            }
            let tail = last_chars(&said, 500);
            if shim.has_ended() {
                return Err(AgentError::Warm(format!(
                    "the resident Python ended before it was ready: {}",
                    tail.trim()
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(AgentError::Warm(format!(
                    "the resident Python was not ready within {WARM_UP_LIMIT:?}: {}",
                    tail.trim()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs a warm-up command in a sandbox being warmed; it must exit with 0.
    async fn warm_up(
        &self,
        id: &SandboxId,
        settings: &Settings,
        argv: &[String],
        dir: &SandboxDir,
    ) -> Result<(), AgentError> {
        let spec = ExecSpec {
            env: settings.env(&BTreeMap::new()),
            workdir: settings.workdir.clone(),
            user: settings.user,
            command: argv.to_vec(),
            scratch: dir.root().join("warm-up"),
        };
        let mut child = self.runtime.exec(id, &spec).await?;
        // Processes left in the background keep the pipes open: read stderr aside, and after
        // the command exits take only what arrives shortly.
        let mut stderr = child.stderr.take().expect("piped");
        let mut stdout = child.stdout.take().expect("piped");
        let sink = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut stdout, &mut tokio::io::sink()).await;
        });
        let said = tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut buf).await;
            buf
        });
        let status = match tokio::time::timeout(WARM_UP_LIMIT, child.wait()).await {
            Err(_) => {
                let _ = self.runtime.kill_exec(id, &spec).await;
                said.abort();
                return Err(AgentError::Warm(format!("the warm-up command ran longer than {WARM_UP_LIMIT:?}")));
            }
            Ok(Err(e)) => return Err(AgentError::Warm(format!("the warm-up command: {e}"))),
            Ok(Ok(status)) => status,
        };
        sink.abort();
        if status.success() {
            said.abort();
            return Ok(());
        }
        let said = match tokio::time::timeout(EXEC_DRAIN, said).await {
            Ok(Ok(b)) => String::from_utf8_lossy(&b).into_owned(),
            _ => String::new(),
        };
        let tail = last_chars(&said, 500);
        Err(AgentError::Warm(format!("the warm-up command exited with {status}: {}", tail.trim())))
    }

    /// The benchmark stand-in for a launch (see [`AgentConfig::simulate_launch`]): records the
    /// sandbox as running, and after `lasts` (or a kill) as ended — nothing is started.
    async fn simulate(self: &Arc<Self>, id: &SandboxId, takes: Capacity, lasts: Duration) -> Result<(), AgentError> {
        let (kill_tx, mut kill_rx) = mpsc::unbounded_channel();
        let settings = Settings { env: BTreeMap::new(), workdir: "/".into(), user: NOBODY };
        let live = Live { kill: kill_tx, activity: Activity::new(), settings: Arc::new(settings), takes };
        self.live.lock().expect("lock").insert(id.clone(), live);
        let running = self
            .record(id, |r| {
                if r.state == SandboxState::Starting {
                    r.state = SandboxState::Running;
                    r.started_at = Some(Utc::now());
                }
            })
            .await;
        if !matches!(&running, Ok(Some(r)) if r.state == SandboxState::Running) {
            self.live.lock().expect("lock").remove(id);
            return running.map(drop).map_err(Into::into);
        }
        let (this, id) = (self.clone(), id.clone());
        tokio::spawn(async move {
            let reason = tokio::select! {
                _ = tokio::time::sleep(lasts) => None,
                r = kill_rx.recv() => r.map(|o: KillOrder| o.reason),
            };
            let _ = this
                .record(&id, move |r| {
                    r.ended_at = Some(Utc::now());
                    match reason {
                        None => {
                            r.state = SandboxState::Exited;
                            r.exit_code = Some(0);
                        }
                        Some(k) => {
                            r.state = SandboxState::Killed;
                            r.kill_reason = Some(k);
                        }
                    }
                })
                .await;
            this.live.lock().expect("lock").remove(&id);
        });
        Ok(())
    }

    /// Waits (at most [`READY_WAIT`]) until the runtime reports `id` running, or its shim ends.
    pub(crate) async fn until_running(&self, id: &SandboxId, shim: &mut ShimHandle) {
        let give_up = Instant::now() + READY_WAIT;
        while Instant::now() < give_up && !shim.has_ended() {
            if let Ok(Some(RuntimeStatus::Running)) = self.runtime.status(id).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Watches one sandbox to its end and records how it ended.
    async fn supervise(
        self: Arc<Self>,
        rec: SandboxRecord,
        mut shim: ShimHandle,
        mut kill_rx: mpsc::UnboundedReceiver<KillOrder>,
        activity: Activity,
    ) {
        let id = rec.id.clone();
        let started = rec.started_at.unwrap_or(rec.created_at);
        // Time asleep does not count against max_duration.
        let elapsed =
            (Utc::now() - started).to_std().unwrap_or_default().saturating_sub(Duration::from_millis(rec.slept_ms));
        let deadline = Instant::now() + rec.spec.max_duration().saturating_sub(elapsed);
        let idle = rec.spec.idle_timeout();
        let sleep_after = rec.spec.sleep_after();
        let mut asked_to_sleep = false;
        let mut reason: Option<KillReason> = None;
        let mut dying = Dying::default();
        // Once a reason is set: when the kill began, and when to strike again.
        let mut killing_since: Option<Instant> = None;
        let mut strike_at: Option<Instant> = None;
        let mut idle_tick = tokio::time::interval(Duration::from_millis(500));
        let mut disk_tick = tokio::time::interval(DISK_CHECK);
        let disk_limit = rec.spec.resources.disk_mib * 1024 * 1024;
        let memory_limit = crate::erinyes::memory_limit_bytes(&rec.spec.resources);
        let mut memory_warned = false;
        let dir = self.dir(&id);
        loop {
            tokio::select! {
                _ = shim.wait() => {
                    if activity.falling_asleep.load(std::sync::atomic::Ordering::SeqCst) {
                        return; // Hypnos took it: not an end
                    }
                    break;
                }
                _ = tokio::time::sleep_until(deadline), if reason.is_none() => reason = Some(KillReason::Timeout),
                _ = idle_tick.tick(), if reason.is_none() && (idle.is_some() || sleep_after.is_some()) => {
                    if sleep_after.is_some_and(|d| activity.idle_for() >= d) && !asked_to_sleep {
                        // Hypnos's auto-sleep: idle long enough.
                        asked_to_sleep = true;
                        let (this, id) = (self.clone(), id.clone());
                        tokio::spawn(async move {
                            match this.sleep(&id).await {
                                Ok(_) => info!(sandbox = %id, "idle: put to sleep"),
                                Err(e) => warn!(sandbox = %id, error = %error_chain(&e), "idle: could not put it to sleep"),
                            }
                        });
                        continue;
                    } else if idle.is_some_and(|d| activity.idle_for() >= d) {
                        reason = Some(KillReason::Idle);
                    } else {
                        continue;
                    }
                }
                Some(order) = kill_rx.recv(), if reason.is_none() => {
                    reason = Some(order.reason);
                    if order.signal != libc::SIGKILL && order.grace_ms > 0 {
                        // Thanatos's gentle path: the signal, then a grace period to end by itself.
                        self.initiate(&id, &mut dying, order).await;
                        self.thaw(&id).await;
                        if let Err(e) = self.runtime.kill(&id, order.signal, false).await {
                            warn!(sandbox = %id, error = %error_chain(&e), "sending the termination signal failed");
                        }
                        dying.phase(TerminationPhase::Signaled);
                        dying.phase(TerminationPhase::Draining);
                        info!(sandbox = %id, signal = %signal_name(order.signal), grace_ms = order.grace_ms, "draining sandbox");
                        strike_at = Some(Instant::now() + Duration::from_millis(order.grace_ms));
                        continue;
                    }
                    self.initiate(&id, &mut dying, order).await;
                }
                _ = disk_tick.tick(), if reason.is_none() => {
                    // The writable layer and the logs both land on the node's disk.
                    let logs = [dir.stdout(), dir.stderr()].iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum::<u64>();
                    match self.runtime.stats(&id, &dir).await {
                        Ok(s) if s.disk_bytes + logs > disk_limit => reason = Some(KillReason::DiskLimit),
                        Ok(s) => {
                            // Tisiphone's warning: the sandbox nears its memory limit.
                            if !memory_warned && s.memory_bytes * 100 >= memory_limit * MEMORY_WARNING_PERCENT {
                                memory_warned = true;
                                self.memory_warning(&id, s.memory_bytes, memory_limit).await;
                            }
                            continue;
                        }
                        _ => continue,
                    }
                }
                _ = tokio::time::sleep_until(strike_at.unwrap_or(deadline)), if strike_at.is_some() => {}
            }
            if dying.phases.is_empty() {
                // Ended by Tartarus's own enforcement (deadline, idle, disk): SIGKILL at once.
                let order = KillOrder::from(reason.unwrap_or(KillReason::Requested));
                self.initiate(&id, &mut dying, order).await;
            }
            // A reason is set (or a strike is due): SIGKILL, again until the shim reports the end.
            let since = *killing_since.get_or_insert_with(|| {
                info!(sandbox = %id, reason = ?reason, "killing sandbox");
                Instant::now()
            });
            if !dying.killed {
                dying.killed = true;
                dying.phase(if dying.signal == Some(libc::SIGKILL) {
                    TerminationPhase::Signaled
                } else {
                    TerminationPhase::Terminating
                });
            }
            if since.elapsed() >= self.runtime.kill_grace() {
                warn!(sandbox = %id, "did not die after SIGKILL; destroying");
                let _ = self.runtime.kill(&id, libc::SIGKILL, true).await;
                let _ = self.runtime.destroy(&id).await;
                strike_at = Some(Instant::now() + self.runtime.kill_grace());
                continue;
            }
            self.thaw(&id).await;
            let retry = match self.runtime.kill(&id, libc::SIGKILL, false).await {
                Ok(()) => self.runtime.kill_grace(),
                // Not created yet by the runtime (killed right after start): try again soon.
                Err(RuntimeError::NotFound(_)) => Duration::from_millis(50),
                Err(e) => {
                    warn!(sandbox = %id, error = %error_chain(&e), "kill failed");
                    Duration::from_millis(500)
                }
            };
            strike_at = Some(Instant::now() + retry);
        }
        self.finish_dying(&id, reason, dying).await;
    }

    /// Thaws `id` if it is frozen: a frozen sandbox cannot take a signal.
    async fn thaw(&self, id: &SandboxId) {
        if let Ok(Some(RuntimeStatus::Paused)) = self.runtime.status(id).await {
            let _ = self.runtime.resume(id).await;
        }
    }

    /// Thanatos's first phase: records the order and runs the pre-mortem hooks.
    async fn initiate(&self, id: &SandboxId, dying: &mut Dying, order: KillOrder) {
        dying.signal = Some(order.signal);
        dying.grace_ms = order.grace_ms;
        dying.phase(TerminationPhase::Initiated);
        let hooks: Vec<Arc<dyn MortemHook>> = self.hooks.lock().expect("lock").clone();
        for h in hooks {
            h.before(id, TerminationReason::of(order.reason)).await;
        }
    }

    /// Tisiphone: records that a sandbox nears its memory limit, in its record and in Cocytus.
    async fn memory_warning(&self, id: &SandboxId, used: u64, limit: u64) {
        let message = format!(
            "memory at {} MiB of its {} MiB limit ({}%)",
            used / (1024 * 1024),
            limit / (1024 * 1024),
            used * 100 / limit.max(1)
        );
        warn!(sandbox = %id, %message, "Tisiphone: memory warning");
        let event = SandboxEvent { at: Utc::now(), kind: "memory_warning".into(), message: message.clone() };
        let rec = self.record(id, move |r| r.events.push(event.clone())).await;
        if let Ok(Some(r)) = rec {
            let failure = tartarus_core::Failure {
                sandbox: id.clone(),
                tenant: r.spec.tenant.clone(),
                node: Some(self.name().to_owned()),
                kind: "memory_warning".into(),
                reason: message,
                at: Utc::now(),
            };
            if let Err(e) = self.state.cocytus.report(&failure).await {
                warn!(error = %e, "Cocytus report failed");
            }
        }
    }

    /// Records the end of sandbox `id` (see [`Hecatoncheir::finish_dying`]) when nothing was killing it.
    async fn finish(&self, id: &SandboxId, reason: Option<KillReason>) {
        self.finish_dying(id, reason, Dying::default()).await;
    }

    /// Records the end of sandbox `id` from its shim's exit status and its accounting, then
    /// releases what it held (Thanatos) and wipes its writable layer (Lethe), then runs the
    /// post-mortem hooks and the request's callback.
    async fn finish_dying(&self, id: &SandboxId, reason: Option<KillReason>, mut dying: Dying) {
        let dir = self.dir(id);
        let exit = ShimExit::read(&dir.exit_file());
        // The accounting is read before anything is released; the record is written before
        // the slower release, so whoever waits for the outcome is not kept waiting.
        let stats = self.runtime.stats(id, &dir).await.unwrap_or_else(|e| {
            warn!(sandbox = %id, error = %error_chain(&e), "reading the sandbox's accounting failed");
            SandboxStats::default()
        });
        // Entered already when SIGKILL followed a grace period; otherwise now.
        if dying.phases.last().map(|p| p.phase) != Some(TerminationPhase::Terminating) {
            dying.phase(TerminationPhase::Terminating);
        }
        let why = match (reason, stats.oom_kills > 0) {
            (Some(k), _) => TerminationReason::of(k),
            (None, true) => TerminationReason::ResourceLimit,
            (None, false) => TerminationReason::Completed,
        };
        dying.phase(TerminationPhase::Completed);
        let termination = Termination {
            reason: why,
            signal: dying.signal.map(signal_name),
            grace_ms: dying.grace_ms,
            graceful: !dying.killed && stats.oom_kills == 0,
            phases: dying.phases,
        };
        let outcome = self
            .record(id, move |r| {
                r.ended_at = Some(Utc::now());
                r.stats = Some(stats);
                r.exit_code = exit.map(|e| e.code_or_signal());
                r.termination = Some(termination.clone());
                match (reason, stats.oom_kills > 0, exit) {
                    (Some(reason), _, _) => {
                        r.state = SandboxState::Killed;
                        r.kill_reason = Some(reason);
                    }
                    (None, true, _) => {
                        r.state = SandboxState::Killed;
                        r.kill_reason = Some(KillReason::OutOfMemory);
                    }
                    (None, false, Some(_)) => r.state = SandboxState::Exited,
                    (None, false, None) => {
                        r.state = SandboxState::Failed;
                        r.error = Some("the sandbox's shim ended without recording an exit status".into());
                    }
                }
            })
            .await;
        match &outcome {
            Ok(Some(r)) => info!(sandbox = %id, outcome = %r.outcome(), "sandbox ended"),
            Ok(None) => warn!(sandbox = %id, "ended sandbox has no record"),
            Err(e) => warn!(sandbox = %id, error = %e, "could not record the end of a sandbox"),
        }
        if let Err(e) = self.stop_and_destroy(id).await {
            warn!(sandbox = %id, error = %error_chain(&e), "releasing the sandbox failed");
        }
        if let Err(e) = crate::lethe::forget(&dir).await {
            warn!(sandbox = %id, error = %e, "wiping the writable layer failed");
        }
        self.unplug(id).await;
        self.live.lock().expect("lock").remove(id);
        if let Ok(Some(rec)) = outcome {
            let hooks: Vec<Arc<dyn MortemHook>> = self.hooks.lock().expect("lock").clone();
            for h in hooks {
                h.after(&rec).await;
            }
            if let Some(url) = rec.spec.callback_url.clone() {
                tokio::spawn(crate::thanatos::call_back(url, rec));
            }
        }
    }

    /// Releases sandbox `id` in the runtime: whatever still runs in it (the keeper of a restored
    /// or pooled sandbox outlives its command) is killed and seen stopped first, since `runsc
    /// delete` of a running sandbox can outlast runsc's own 5 s timeout.
    pub(crate) async fn stop_and_destroy(&self, id: &SandboxId) -> Result<SandboxStats, RuntimeError> {
        if matches!(self.runtime.status(id).await, Ok(Some(RuntimeStatus::Running | RuntimeStatus::Paused))) {
            self.thaw(id).await;
            let _ = self.runtime.kill(id, libc::SIGKILL, true).await;
            let give_up = Instant::now() + self.runtime.kill_grace();
            while Instant::now() < give_up
                && matches!(self.runtime.status(id).await, Ok(Some(RuntimeStatus::Running | RuntimeStatus::Paused)))
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.runtime.destroy(id).await
    }

    /// Removes sandbox `id`'s network (Styx), if it had one.
    async fn unplug(&self, id: &SandboxId) {
        if let Some(styx) = &self.cfg.styx {
            styx.detach(id).await;
        }
    }

    /// Adds a hook run before (pre-mortem) and after (post-mortem) every termination here.
    pub fn add_hook(&self, hook: Arc<dyn MortemHook>) {
        self.hooks.lock().expect("lock").push(hook);
    }

    /// Finds the sandboxes this node was running before a restart: watches the living again,
    /// records those that ended meanwhile, and marks the vanished as lost.
    pub async fn adopt(self: &Arc<Self>) -> Result<AdoptReport, AgentError> {
        let filter = SandboxFilter {
            states: vec![SandboxState::Starting, SandboxState::Running, SandboxState::Paused],
            node: Some(self.cfg.node_name.clone()),
            ..Default::default()
        };
        let mut report = AdoptReport::default();
        for rec in self.state.sandboxes.list(&filter).await? {
            let id = rec.id.clone();
            let dir = self.dir(&id);
            let pid = std::fs::read_to_string(dir.pid_file()).ok().and_then(|p| p.trim().parse::<u32>().ok());
            match pid {
                Some(pid) if is_shim_of(pid, &dir) => {
                    let (kill_tx, kill_rx) = mpsc::unbounded_channel();
                    let activity = Activity::new();
                    let template = self.state.templates.template(&rec.spec.template).await?;
                    let settings = template
                        .and_then(|t| Settings::of(&rec.spec, &t).ok())
                        // Its template's settings cannot be read: later execs run as nobody, never root.
                        .unwrap_or_else(|| Settings { env: rec.spec.env.clone(), workdir: "/".into(), user: NOBODY });
                    let takes = Capacity::of_sandbox(rec.spec.resources.vcpus, rec.spec.resources.memory_mib);
                    let live = Live { kill: kill_tx, activity: activity.clone(), settings: Arc::new(settings), takes };
                    self.live.lock().expect("lock").insert(id.clone(), live);
                    info!(sandbox = %id, pid, "re-adopted running sandbox");
                    let rec = if rec.state == SandboxState::Starting {
                        // Started just before the restart, not yet recorded as running.
                        self.record(&id, move |r| {
                            r.state = SandboxState::Running;
                            r.started_at.get_or_insert_with(Utc::now);
                        })
                        .await?
                        .unwrap_or(rec)
                    } else {
                        rec
                    };
                    tokio::spawn(self.clone().supervise(rec, ShimHandle::Adopted(pid), kill_rx, activity));
                    report.adopted.push(id);
                }
                _ if ShimExit::read(&dir.exit_file()).is_some() => {
                    self.finish(&id, None).await;
                    report.finished.push(id);
                }
                _ if rec.state == SandboxState::Starting => {
                    // Placed but never started: clear what was prepared and queue it again; its
                    // Acheron entry, never acknowledged, is delivered again and launches it.
                    let _ = self.runtime.destroy(&id).await;
                    let _ = crate::lethe::forget(&dir).await;
                    self.record(&id, |r| {
                        r.state = SandboxState::Queued;
                        r.node = None;
                    })
                    .await?;
                    info!(sandbox = %id, "placed but not started before the restart: queued again");
                    report.requeued.push(id);
                }
                _ => {
                    let _ = self.runtime.destroy(&id).await;
                    let _ = crate::lethe::forget(&dir).await;
                    self.record(&id, |r| {
                        r.state = SandboxState::Lost;
                        r.ended_at = Some(Utc::now());
                        r.error =
                            Some("its shim was gone when the agent restarted and no exit status was recorded".into());
                    })
                    .await?;
                    warn!(sandbox = %id, "sandbox lost");
                    report.lost.push(id);
                }
            }
        }
        self.sweep().await;
        if let Some(styx) = &self.cfg.styx {
            // Networks of sandboxes that ended, or were never started, while the agent was away.
            let keep: std::collections::HashSet<SandboxId> = self.live.lock().expect("lock").keys().cloned().collect();
            styx.sweep(&keep).await;
        }
        Ok(report)
    }

    /// Releases what sandboxes that are no longer this node's still hold: ended ones (a stop
    /// between recording an end and releasing it leaves their runtime state, cgroup and writable
    /// layer behind), and ones whose records went elsewhere while this agent was away (requeued
    /// or marked lost by Olympus) — those are killed, so no sandbox ever runs twice.
    async fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(&self.cfg.sandboxes_dir) else { return };
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().and_then(|n| SandboxId::parse(n).ok()) else { continue };
            let dir = self.dir(&id);
            if !dir.bundle().exists() && !dir.writable().exists() {
                continue;
            }
            let (not_ours, no_record) = match self.state.sandboxes.get(&id).await {
                Ok(Some(r)) => (r.state.is_terminal() || r.node.as_deref() != Some(self.name()), false),
                Ok(None) => (true, true),
                Err(_) => (false, false),
            };
            if not_ours && !self.live.lock().expect("lock").contains_key(&id) {
                info!(sandbox = %id, "releasing what a sandbox no longer on this node still held");
                if let Err(e) = self.stop_and_destroy(&id).await {
                    warn!(sandbox = %id, error = %error_chain(&e), "releasing an ended sandbox failed");
                }
                if no_record {
                    // A pooled sandbox never handed over (or a warming one): no logs anyone could read.
                    let _ = tokio::fs::remove_dir_all(dir.root()).await;
                } else {
                    let _ = crate::lethe::forget(&dir).await;
                }
            }
        }
    }

    pub(crate) fn live_or_err(
        &self,
        rec: &SandboxRecord,
        want: &[SandboxState],
    ) -> Result<(Activity, Arc<Settings>), AgentError> {
        let live = self.live.lock().expect("lock");
        match live.get(&rec.id) {
            Some(l) if want.contains(&rec.state) => Ok((l.activity.clone(), l.settings.clone())),
            _ => Err(AgentError::NotRunning { id: rec.id.clone(), state: rec.state.as_str() }),
        }
    }

    pub(crate) async fn get(&self, id: &SandboxId) -> Result<SandboxRecord, AgentError> {
        self.state.sandboxes.get(id).await?.ok_or_else(|| AgentError::NotFound(id.clone()))
    }

    /// Asks the supervisor of `id` to end it (Thanatos): a [`KillReason`] kills at once, a
    /// [`KillOrder`] may give a signal and a grace period first. `false` when it is not running here.
    pub fn kill(&self, id: &SandboxId, order: impl Into<KillOrder>) -> bool {
        match self.live.lock().expect("lock").get(id) {
            Some(l) => l.kill.send(order.into()).is_ok(),
            None => false,
        }
    }

    /// Ends every sandbox running here with `order` (Thanatos) and waits, at most `limit`, until
    /// they have ended and are recorded; returns how many were asked to end.
    pub async fn end_all(&self, order: KillOrder, limit: Duration) -> usize {
        let ids: Vec<SandboxId> = self.live.lock().expect("lock").keys().cloned().collect();
        for id in &ids {
            self.kill(id, order);
        }
        let give_up = Instant::now() + limit;
        while self.running() > 0 && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ids.len()
    }

    /// Freezes a running sandbox.
    pub async fn pause(&self, id: &SandboxId) -> Result<SandboxRecord, AgentError> {
        let rec = self.get(id).await?;
        self.live_or_err(&rec, &[SandboxState::Running])?;
        self.runtime.pause(id).await?;
        Ok(self.record(id, |r| r.state = SandboxState::Paused).await?.expect("exists"))
    }

    /// Thaws a paused sandbox.
    pub async fn resume(&self, id: &SandboxId) -> Result<SandboxRecord, AgentError> {
        let rec = self.get(id).await?;
        self.live_or_err(&rec, &[SandboxState::Paused])?;
        self.runtime.resume(id).await?;
        Ok(self.record(id, |r| r.state = SandboxState::Running).await?.expect("exists"))
    }

    /// Resource use of a running sandbox.
    pub async fn stats(&self, id: &SandboxId) -> Result<SandboxStats, AgentError> {
        let rec = self.get(id).await?;
        self.live_or_err(&rec, &[SandboxState::Running, SandboxState::Paused])?;
        Ok(self.runtime.stats(id, &self.dir(id)).await?)
    }

    /// Runs a further command in running sandbox `id`; its output streams back, then its exit.
    #[instrument(skip(self, req), fields(sandbox = %id))]
    pub async fn exec(self: &Arc<Self>, id: &SandboxId, req: ExecRequest) -> Result<ExecStream, AgentError> {
        let rec = self.get(id).await?;
        let (activity, settings) = self.live_or_err(&rec, &[SandboxState::Running])?;
        if !activity.ready.load(std::sync::atomic::Ordering::SeqCst) {
            let give_up = Instant::now() + READY_WAIT;
            while Instant::now() < give_up {
                match self.runtime.status(id).await {
                    Ok(Some(RuntimeStatus::Running)) => {
                        activity.ready.store(true, std::sync::atomic::Ordering::SeqCst);
                        break;
                    }
                    // Not known to the runtime yet, or still being created: wait a little.
                    Ok(None | Some(RuntimeStatus::Creating)) => tokio::time::sleep(Duration::from_millis(10)).await,
                    _ => break,
                }
            }
        }
        let guard = ExecGuard::new(activity);
        let n = self.exec_seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let spec = ExecSpec {
            env: settings.env(&req.env),
            workdir: req.workdir.clone().unwrap_or_else(|| settings.workdir.clone()),
            user: settings.user,
            command: req.command.clone(),
            scratch: self.dir(id).root().join(format!("exec-{n}")),
        };
        let mut child = self.runtime.exec(id, &spec).await?;
        let limit = req.timeout.map(|t| t.0).unwrap_or(rec.spec.max_duration());
        let (tx, rx) = mpsc::channel(64);
        let (stdout, stderr) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
        let (this, id) = (self.clone(), id.clone());
        tokio::spawn(async move {
            let _guard = guard;
            let runtime_said = Arc::new(Mutex::new(Vec::new()));
            let mut out = tokio::spawn(pump(stdout, Stream::Stdout, tx.clone(), None));
            let mut err = tokio::spawn(pump(stderr, Stream::Stderr, tx.clone(), Some(runtime_said.clone())));
            let ended = tokio::select! {
                status = child.wait() => Some(status),
                _ = tokio::time::sleep(limit) => None,
                _ = tx.closed() => None,
            };
            let exit = match ended {
                None => {
                    // Timed out, or nobody reads any more: end the command inside the sandbox too.
                    if let Err(e) = this.runtime.kill_exec(&id, &spec).await {
                        warn!(sandbox = %id, error = %error_chain(&e), "could not kill an exec");
                    }
                    let _ = child.kill().await;
                    ExitInfo {
                        state: SandboxState::Killed,
                        exit_code: None,
                        kill_reason: Some(KillReason::Timeout),
                        error: None,
                    }
                }
                Some(Err(e)) => ExitInfo {
                    state: SandboxState::Failed,
                    exit_code: None,
                    kill_reason: None,
                    error: Some(format!("exec: {e}")),
                },
                Some(Ok(status)) => {
                    // Background children may hold the pipes open: take what comes soon, then stop.
                    let drain = async {
                        (&mut out).await.ok();
                        (&mut err).await.ok();
                    };
                    if tokio::time::timeout(EXEC_DRAIN, drain).await.is_err() {
                        out.abort();
                        err.abort();
                    }
                    let said = String::from_utf8_lossy(&runtime_said.lock().expect("lock")).into_owned();
                    exec_exit(status.code(), &said)
                }
            };
            for ext in ["process.json", "pid"] {
                let _ = std::fs::remove_file(spec.scratch.with_extension(ext));
            }
            let _ = tx.send(OutputEvent::Exit(exit)).await;
        });
        Ok(rx)
    }

    /// The events and records this agent announces through.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// The state it records into.
    pub fn state(&self) -> &State {
        &self.state
    }
}

/// How an exec ended, from the runtime's exit code and the end of what it wrote to stderr.
fn exec_exit(code: Option<i32>, stderr_tail: &str) -> ExitInfo {
    // runsc itself exits 128 when it cannot start the command at all, and says why.
    let runsc_error = |l: &&str| {
        l.contains("executing processes for container")
            || l.starts_with("loading sandbox")
            || l.starts_with("loading container")
    };
    match stderr_tail.lines().find(runsc_error) {
        Some(line) if code == Some(128) => ExitInfo {
            state: SandboxState::Failed,
            exit_code: None,
            kill_reason: None,
            error: Some(line.trim().to_owned()),
        },
        _ => ExitInfo { state: SandboxState::Exited, exit_code: code, kill_reason: None, error: None },
    }
}

/// Forwards a pipe as output events; keeps the last bytes in `keep` when asked.
async fn pump(
    mut pipe: impl tokio::io::AsyncRead + Unpin,
    stream: Stream,
    tx: mpsc::Sender<OutputEvent>,
    keep: Option<Arc<Mutex<Vec<u8>>>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Some(k) = &keep {
                    let mut k = k.lock().expect("lock");
                    k.extend_from_slice(&buf[..n]);
                    let excess = k.len().saturating_sub(4096);
                    k.drain(..excess);
                }
                // A receiver that went away stops the forwarding, not the process.
                let _ = tx.send(OutputEvent::Output(stream, buf[..n].to_vec())).await;
            }
        }
    }
}

/// The last `n` characters of `text`.
fn last_chars(text: &str, n: usize) -> String {
    let skip = text.chars().count().saturating_sub(n);
    text.chars().skip(skip).collect()
}

/// An error with its causes, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
