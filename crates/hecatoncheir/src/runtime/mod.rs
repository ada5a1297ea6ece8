//! The runtime trait ("Tartarus"): the lifecycle every isolation backend implements.
//!
//! The agent never runs an isolation tool directly; it asks a [`Runtime`] to prepare a
//! sandbox ([`Runtime::create`]), hands the main command it returns to a [`crate::shim`]
//! ([`Runtime::start`]), and uses the rest of the trait for everything after.

pub mod gvisor;
pub mod refusing;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use tartarus_core::{Resources, SandboxId, SandboxStats};

use crate::lethe::SandboxDir;
use crate::shim::{ShimHandle, ShimSpec};

/// Everything a runtime needs to prepare one sandbox.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The sandbox.
    pub id: SandboxId,
    /// The template's root filesystem (read-only; never written).
    pub rootfs: PathBuf,
    /// The main process; `None` keeps the sandbox up for `exec` (a session).
    pub command: Option<Vec<String>>,
    /// Environment as `KEY=VALUE`.
    pub env: Vec<String>,
    /// Working directory inside the sandbox.
    pub workdir: String,
    /// User and group ids of the processes.
    pub user: (u32, u32),
    /// Limits.
    pub resources: Resources,
    /// The network namespace (Styx) the sandbox runs in, reaching what its contract allows;
    /// `None`: no network at all.
    pub netns: Option<PathBuf>,
    /// The sandbox starts with the hatch as its first process, waiting at its door for the
    /// command to become ([`crate::hatch`]); `command` is then only what a later order carries.
    pub door: bool,
}

/// The command that runs a sandbox's main process to its end; the shim runs it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MainCommand {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// The command waits for a restored sandbox and prints its exit status (see
    /// [`crate::shim::ShimSpec::wait_status`]).
    #[serde(default)]
    pub wait_status: bool,
    /// The network namespace to run it in (the shim enters it first).
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// The sandbox's door ([`crate::hatch`]): the shim holds it open as the command's stdin.
    #[serde(default)]
    pub stdin: Option<PathBuf>,
}

impl MainCommand {
    /// A main command whose own exit status is the sandbox's.
    pub fn new(argv: Vec<String>) -> Self {
        Self { argv, wait_status: false, netns: None, stdin: None }
    }
}

/// A further process to run inside a running sandbox.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// argv.
    pub command: Vec<String>,
    /// Environment as `KEY=VALUE` (the sandbox's, then the request's).
    pub env: Vec<String>,
    /// Working directory.
    pub workdir: String,
    /// User and group ids.
    pub user: (u32, u32),
    /// A path prefix the runtime may use for this exec's own files (removed by the agent).
    pub scratch: PathBuf,
}

/// What a runtime reports about a sandbox it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeStatus {
    /// Being created.
    Creating,
    /// Running.
    Running,
    /// Frozen.
    Paused,
    /// Its main process ended; resources not yet released.
    Stopped,
}

/// A runtime operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime's tool could not be started.
    #[error("cannot run {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The runtime's tool ran and refused.
    #[error("{operation} failed: {message}")]
    Refused {
        /// What was asked (`runsc pause`, …).
        operation: String,
        /// What it said.
        message: String,
    },
    /// Preparing files for the sandbox failed.
    #[error("preparing {path}")]
    Prepare {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The runtime does not know this sandbox.
    #[error("the runtime has no sandbox {0}")]
    NotFound(SandboxId),
    /// A cgroup operation failed.
    #[error(transparent)]
    Cgroup(#[from] crate::erinyes::CgroupError),
}

/// The lifecycle of an isolation backend.
#[async_trait]
pub trait Runtime: Send + Sync {
    /// Short name (`gvisor`).
    fn name(&self) -> &'static str;

    /// Version and mode, e.g. `runsc 0.0~20240729.0, platform systrap`.
    fn describe(&self) -> String;

    /// How a networked sandbox reaches its namespace's interface (what its record says).
    fn network_mode(&self) -> &'static str {
        "the runtime's own"
    }

    /// Prepares the sandbox in `dir` (bundle, writable layer, cgroup) without running it,
    /// and returns the command that runs its main process to the end.
    async fn create(&self, spec: &LaunchSpec, dir: &SandboxDir) -> Result<MainCommand, RuntimeError>;

    /// Starts the main process under a detached shim, so it outlives the agent.
    async fn start(&self, dir: &SandboxDir, main: &MainCommand, shim_exe: &Path) -> Result<ShimHandle, RuntimeError> {
        ShimSpec {
            argv: main.argv.clone(),
            stdout: dir.stdout(),
            stderr: dir.stderr(),
            exit_file: dir.exit_file().file_name().expect("a file").into(),
            wait_status: main.wait_status,
            netns: main.netns.clone(),
            stdin: main.stdin.clone(),
        }
        .spawn(shim_exe, dir)
        .map_err(|source| RuntimeError::Spawn { program: shim_exe.display().to_string(), source })
    }

    /// Starts `spec` inside running sandbox `id`; stdout and stderr are piped, stdin is null.
    async fn exec(&self, id: &SandboxId, spec: &ExecSpec) -> Result<tokio::process::Child, RuntimeError>;

    /// Kills a process started by [`Runtime::exec`] (its timeout passed, or nobody reads it).
    async fn kill_exec(&self, id: &SandboxId, spec: &ExecSpec) -> Result<(), RuntimeError>;

    /// Sends `signal` to the main process (and, with `all`, every process) of `id`.
    async fn kill(&self, id: &SandboxId, signal: i32, all: bool) -> Result<(), RuntimeError>;

    /// Freezes every process of `id`.
    async fn pause(&self, id: &SandboxId) -> Result<(), RuntimeError>;

    /// Thaws `id`.
    async fn resume(&self, id: &SandboxId) -> Result<(), RuntimeError>;

    /// Saves the state of `id` to `image_dir`; with `keep_running` the sandbox goes on (Nyx),
    /// without it the sandbox stops once saved (Hypnos).
    async fn checkpoint(&self, id: &SandboxId, image_dir: &Path, keep_running: bool) -> Result<(), RuntimeError>;

    /// Hypnos's wake: restores sandbox `spec.id` from its own checkpoint in `image_dir` (taken
    /// with [`Runtime::checkpoint`] without `keep_running`), its processes going on where they
    /// were and writing to its logs, and returns the command that waits for its end and reports
    /// its exit status. `image_dir` is only read.
    async fn wake(&self, spec: &LaunchSpec, dir: &SandboxDir, image_dir: &Path) -> Result<MainCommand, RuntimeError> {
        let _ = (dir, image_dir);
        Err(RuntimeError::Refused {
            operation: format!("waking {}", spec.id),
            message: format!("the {} runtime cannot restore a sleeping sandbox", self.name()),
        })
    }

    /// Resumes a sandbox from a Nyx checkpoint in `image_dir` (taken while its hatch waited at
    /// its door) instead of booting it, and returns the command that runs it to its end. Start
    /// that with [`Runtime::start`] as after [`Runtime::create`], then give the request's order
    /// at its door ([`crate::hatch::give`]). `image_dir` is only read.
    async fn restore(&self, spec: &LaunchSpec, dir: &SandboxDir, image_dir: &Path)
        -> Result<MainCommand, RuntimeError>;

    /// Takes over `pooled`, a sandbox prepared ahead for a warm pool (booted or restored, its
    /// hatch waiting at its door), as sandbox `spec.id`: from now on `spec.id` names it in every
    /// call and its limits become `spec.resources`. The agent has already moved `pooled`'s
    /// directory to `dir`, and gives the order at its door next.
    async fn hand_over(&self, pooled: &SandboxId, spec: &LaunchSpec, dir: &SandboxDir) -> Result<(), RuntimeError> {
        let _ = (pooled, dir);
        Err(RuntimeError::Refused {
            operation: format!("handing a pooled sandbox over as {}", spec.id),
            message: format!("the {} runtime keeps no warm pools", self.name()),
        })
    }

    /// What the runtime knows of `id` (`None`: nothing).
    async fn status(&self, id: &SandboxId) -> Result<Option<RuntimeStatus>, RuntimeError>;

    /// Resource use of `id` now (its writable layer is in `dir`).
    async fn stats(&self, id: &SandboxId, dir: &SandboxDir) -> Result<SandboxStats, RuntimeError>;

    /// Releases everything `id` holds (processes, runtime state, cgroup); idempotent.
    async fn destroy(&self, id: &SandboxId) -> Result<SandboxStats, RuntimeError>;

    /// How long `kill` is given before [`Runtime::destroy`] is used instead.
    fn kill_grace(&self) -> Duration {
        Duration::from_secs(5)
    }
}

/// The `PATH` of a `KEY=VALUE` environment (empty without one).
pub fn path_of(env: &[String]) -> &str {
    env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or_default()
}

/// Joins environment maps into `KEY=VALUE` strings, later maps overriding earlier ones.
pub fn env_list<'a>(maps: impl IntoIterator<Item = &'a BTreeMap<String, String>>) -> Vec<String> {
    let mut merged = BTreeMap::new();
    merged.insert("PATH".to_owned(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned());
    for m in maps {
        merged.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    merged.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}
