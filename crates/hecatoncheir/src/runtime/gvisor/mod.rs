//! The gVisor runtime: sandboxes run by `runsc`, a user-space kernel between the tenant's code
//! and the host.
//!
//! Each sandbox gets an OCI bundle ([`bundle`]) over the template's root filesystem, which
//! `runsc` wraps in an overlay whose upper layer lives in the sandbox's `lethe/` directory
//! (memory, on older `runsc`), so the template is never written. The platform is chosen at
//! start: `systrap` where this `runsc` has it, `ptrace` otherwise; `kvm` only when asked.

pub mod bundle;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

use async_trait::async_trait;
use tartarus_core::{SandboxId, SandboxStats};
use tokio::process::Command;

use super::{ExecSpec, LaunchSpec, MainCommand, Runtime, RuntimeError, RuntimeStatus};
use crate::erinyes::{Cgroup, CgroupVersion};
use crate::lethe::SandboxDir;

/// Where Tartarus's own copy of a newer `runsc` is installed by `scripts/setup.sh`.
pub const BUNDLED_RUNSC: &str = "/usr/local/lib/tartarus/runsc";

/// gVisor's platforms (how the Sentry intercepts system calls).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// seccomp-based trapping; fastest without hardware virtualisation.
    Systrap,
    /// `PTRACE_SYSEMU`; works everywhere, slowest.
    Ptrace,
    /// Hardware virtualisation; needs a KVM that runs normal guests.
    Kvm,
}

impl Platform {
    /// The name `runsc --platform` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Systrap => "systrap",
            Self::Ptrace => "ptrace",
            Self::Kvm => "kvm",
        }
    }

    /// Parses a platform name (`auto` is `None`).
    pub fn parse(s: &str) -> Result<Option<Self>, String> {
        match s {
            "auto" => Ok(None),
            "systrap" => Ok(Some(Self::Systrap)),
            "ptrace" => Ok(Some(Self::Ptrace)),
            "kvm" => Ok(Some(Self::Kvm)),
            other => Err(format!("unknown gVisor platform {other:?} (auto, systrap, ptrace, kvm)")),
        }
    }
}

/// How to set the gVisor runtime up.
#[derive(Debug, Clone)]
pub struct GvisorConfig {
    /// The `runsc` binary; `None` picks [`BUNDLED_RUNSC`], else `runsc` on `PATH`.
    pub runsc: Option<PathBuf>,
    /// The platform; `None` chooses automatically.
    pub platform: Option<Platform>,
    /// `runsc --root`: where runsc keeps its state for this agent.
    pub state_root: PathBuf,
    /// A static binary mounted into session sandboxes to keep them up (`busybox sleep`).
    pub session_init: PathBuf,
    /// Where the cgroup hierarchies are mounted.
    pub cgroup_mount: PathBuf,
}

/// What was learnt about a `runsc` binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunscInfo {
    /// The binary.
    pub path: PathBuf,
    /// Its version, e.g. `0.0~20240729.0`.
    pub version: String,
    /// Whether it offers the systrap platform.
    pub has_systrap: bool,
    /// Whether `--overlay2` accepts `dir=` (a disk-backed upper layer).
    pub overlay_dir: bool,
}

impl RunscInfo {
    /// Finds and probes `runsc` (the given path, else [`BUNDLED_RUNSC`], else `PATH`).
    pub fn probe(explicit: Option<&Path>) -> Result<Self, String> {
        let path = match explicit {
            Some(p) => p.to_owned(),
            None if Path::new(BUNDLED_RUNSC).exists() => PathBuf::from(BUNDLED_RUNSC),
            None => {
                which("runsc").ok_or("runsc not found: install it with scripts/setup.sh (or apt-get install runsc)")?
            }
        };
        let out = std::process::Command::new(&path)
            .arg("--version")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .lines()
            .find_map(|l| l.strip_prefix("runsc version "))
            .ok_or_else(|| format!("{} --version printed no version", path.display()))?
            .trim()
            .to_owned();
        let flags = std::process::Command::new(&path)
            .arg("flags")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
        let flags = String::from_utf8_lossy(&flags.stdout) + String::from_utf8_lossy(&flags.stderr);
        Ok(Self { path, version, has_systrap: flags.contains("systrap"), overlay_dir: flags.contains("dir=") })
    }
}

impl Platform {
    /// The platform chosen when none is asked for: systrap where this `runsc` has it, else ptrace.
    pub fn auto(runsc: &RunscInfo) -> Self {
        if runsc.has_systrap {
            Self::Systrap
        } else {
            Self::Ptrace
        }
    }
}

/// The `--overlay2` flag keeping a sandbox's writes out of its root: on disk in `writable`
/// where this `runsc` can, in memory otherwise.
pub fn overlay_flag(runsc: &RunscInfo, writable: &Path) -> String {
    if runsc.overlay_dir {
        format!("--overlay2=root:dir={}", writable.display())
    } else {
        "--overlay2=root:memory".into()
    }
}

/// The global `runsc` flags of a new sandbox: state root, platform, network (none, or `network`
/// in the namespace runsc is started in), and `overlay`.
pub fn sandbox_flags(
    state_root: &Path,
    platform: Platform,
    network: Option<NetworkMode>,
    overlay: Option<String>,
) -> Vec<String> {
    let mut a = vec![
        "--root".to_owned(),
        state_root.display().to_string(),
        format!("--platform={}", platform.as_str()),
        network.map_or("--network=none", NetworkMode::flag).to_owned(),
    ];
    a.extend(overlay);
    a
}

/// How a networked sandbox's gVisor uses the network namespace it is started in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    /// gVisor's own network stack (`--network=sandbox`): the namespace's interfaces are taken
    /// over by the Sentry, whose netstack speaks for the sandbox.
    Netstack,
    /// The host kernel's stack of the sandbox's own namespace (`--network=host` inside it):
    /// for runsc builds whose netstack refuses to start on this kernel.
    Host,
}

impl NetworkMode {
    /// The `runsc --network` value.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Netstack => "--network=sandbox",
            Self::Host => "--network=host",
        }
    }

    /// What a record and `doctor` say.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Netstack => "gvisor netstack inside the sandbox's namespace",
            Self::Host => "gvisor host network inside the sandbox's namespace",
        }
    }
}

/// Finds a program on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// The gVisor runtime.
#[derive(Debug)]
pub struct Gvisor {
    runsc: RunscInfo,
    platform: Platform,
    state_root: PathBuf,
    session_init: PathBuf,
    /// The hatch binary, written by [`Gvisor::new`] beside runsc's state.
    hatch: PathBuf,
    cgroup_mount: PathBuf,
    cgroups: CgroupVersion,
    /// Sandboxes handed over from a warm pool: the sandbox's id → the id `runsc` and the cgroup
    /// know it by. Kept on disk too ([`Gvisor::alias_dir`]), so a restarted agent finds them.
    aliases: Mutex<HashMap<SandboxId, SandboxId>>,
    /// How networked sandboxes use their namespace (host until [`Gvisor::probe_network`]).
    network: Mutex<NetworkMode>,
}

/// Creating the gVisor runtime failed.
#[derive(Debug, thiserror::Error)]
pub enum GvisorSetupError {
    /// `runsc` is missing or broken.
    #[error("gVisor: {0}")]
    Runsc(String),
    /// The state directory cannot be made.
    #[error("gVisor state directory {path}")]
    StateRoot {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The cgroup layout cannot be read.
    #[error("cannot read the cgroup layout at {path}")]
    Cgroups {
        /// The mount.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Gvisor {
    /// Probes `runsc` and the host and prepares the runtime.
    pub fn new(cfg: GvisorConfig) -> Result<Self, GvisorSetupError> {
        let runsc = RunscInfo::probe(cfg.runsc.as_deref()).map_err(GvisorSetupError::Runsc)?;
        let platform = match cfg.platform {
            Some(Platform::Systrap) if !runsc.has_systrap => {
                return Err(GvisorSetupError::Runsc(format!(
                    "runsc {} has no systrap platform; install a newer runsc with scripts/setup.sh or use --platform ptrace",
                    runsc.version
                )))
            }
            Some(p) => p,
            None => Platform::auto(&runsc),
        };
        std::fs::create_dir_all(&cfg.state_root)
            .map_err(|source| GvisorSetupError::StateRoot { path: cfg.state_root.clone(), source })?;
        let cgroups = CgroupVersion::detect(&cfg.cgroup_mount)
            .map_err(|source| GvisorSetupError::Cgroups { path: cfg.cgroup_mount.clone(), source })?;
        let aliases = read_aliases(&Self::alias_dir_of(&cfg.state_root));
        let hatch = cfg.state_root.join("tartarus-hatch");
        crate::hatch::install(&hatch).map_err(|source| GvisorSetupError::StateRoot { path: hatch.clone(), source })?;
        Ok(Self {
            runsc,
            platform,
            state_root: cfg.state_root,
            session_init: cfg.session_init,
            hatch,
            cgroup_mount: cfg.cgroup_mount,
            cgroups,
            aliases: Mutex::new(aliases),
            network: Mutex::new(NetworkMode::Host),
        })
    }

    /// Decides how networked sandboxes use their namespace: boots a throwaway sandbox with
    /// gVisor's netstack inside a throwaway namespace (its first process is the hatch, which
    /// ends at once); netstack if it booted, host mode otherwise. Blocking (a sandbox boot);
    /// returns the mode and, for host mode, what runsc said.
    pub fn probe_network(&self, scratch: &Path) -> (NetworkMode, Option<String>) {
        let (mode, why) = match self.try_netstack(scratch) {
            Ok(()) => (NetworkMode::Netstack, None),
            Err(why) => (NetworkMode::Host, Some(why)),
        };
        *self.network.lock().expect("lock") = mode;
        (mode, why)
    }

    /// The mode in use for networked sandboxes.
    pub fn network_mode(&self) -> NetworkMode {
        *self.network.lock().expect("lock")
    }

    fn try_netstack(&self, scratch: &Path) -> Result<(), String> {
        use std::os::unix::process::CommandExt;
        let tag = format!("tt-probe-{}", std::process::id());
        let dir = scratch.join(&tag);
        let _ = std::fs::remove_dir_all(&dir);
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(|e| format!("{}: {e}", rootfs.display()))?;
        std::fs::create_dir_all(dir.join("bundle")).map_err(|e| format!("{}: {e}", dir.display()))?;
        let ip = |args: &[&str]| std::process::Command::new("ip").args(args).output();
        let _ = ip(&["netns", "del", &tag]);
        match ip(&["netns", "add", &tag]) {
            Ok(o) if o.status.success() => {}
            Ok(o) => return Err(format!("ip netns add: {}", String::from_utf8_lossy(&o.stderr).trim())),
            Err(e) => return Err(format!("cannot run ip: {e}")),
        }
        let netns = PathBuf::from("/run/netns").join(&tag);
        let cgroup = format!("/tartarus/{tag}");
        let spec = LaunchSpec {
            id: SandboxId::generate(),
            rootfs,
            command: Some(vec![crate::hatch::IN_SANDBOX.into()]),
            env: Vec::new(),
            workdir: "/".into(),
            user: (0, 0),
            resources: tartarus_core::Resources::default(),
            netns: Some(netns.clone()),
            door: false,
        };
        let result = (|| {
            let config = bundle::config(&spec, &self.session_init, &self.hatch, &cgroup);
            std::fs::write(dir.join("bundle/config.json"), config).map_err(|e| format!("writing the bundle: {e}"))?;
            let ns = std::fs::File::open(&netns).map_err(|e| format!("{}: {e}", netns.display()))?;
            let mut args = sandbox_flags(&dir.join("state"), self.platform, Some(NetworkMode::Netstack), None);
            args.extend(["run".into(), "--bundle".into(), dir.join("bundle").display().to_string(), tag.clone()]);
            let mut cmd = std::process::Command::new(&self.runsc.path);
            cmd.args(&args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
            // SAFETY: setns is async-signal-safe; it moves only the child about to exec runsc.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
                });
            }
            let out = cmd.output().map_err(|e| format!("cannot run {}: {e}", self.runsc.path.display()))?;
            let said = String::from_utf8_lossy(&out.stderr);
            // The hatch, given no order, says so and ends: the sandbox booted with netstack.
            if said.contains("tartarus hatch") {
                return Ok(());
            }
            let tail: Vec<&str> = said.lines().filter(|l| !l.trim().is_empty()).rev().take(2).collect();
            Err(format!(
                "runsc --network=sandbox {}: {}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            ))
        })();
        let state = dir.join("state").display().to_string();
        let _ = std::process::Command::new(&self.runsc.path)
            .args(["--root", &state, "delete", "--force", &tag])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = ip(&["netns", "del", &tag]);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = Cgroup::new(&self.cgroup_mount, self.cgroups, &cgroup).remove();
        result
    }

    fn alias_dir_of(state_root: &Path) -> PathBuf {
        state_root.join("tartarus-aliases")
    }

    /// Where handovers are written down: one file per handed-over sandbox, holding the pooled id.
    fn alias_dir(&self) -> PathBuf {
        Self::alias_dir_of(&self.state_root)
    }

    /// The name `runsc` and the cgroup know sandbox `id` by (another for a handed-over one).
    fn cid(&self, id: &SandboxId) -> SandboxId {
        self.aliases.lock().expect("lock").get(id).cloned().unwrap_or_else(|| id.clone())
    }

    /// `runsc restore -detach` of `id` from `image_dir` with the bundle in `dir` (Hypnos's wake:
    /// the restored processes write to the sandbox's logs, appended to). What runsc says when it
    /// refuses is read back from there and cut off the logs again.
    async fn restore_detached(&self, id: &SandboxId, dir: &SandboxDir, image_dir: &Path) -> Result<(), RuntimeError> {
        let mut args = self.sandbox_args(dir, false);
        args.drain(..2); // --root comes from base_args
        args.extend([
            "restore".into(),
            "-detach".into(),
            format!("--image-path={}", image_dir.display()),
            "--bundle".into(),
            dir.bundle().display().to_string(),
            id.to_string(),
        ]);
        let (out, err) = (dir.stdout(), dir.stderr());
        let open = |p: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|source| RuntimeError::Prepare { path: p.to_owned(), source })
        };
        let stderr = open(&err)?;
        let before = stderr.metadata().map(|m| m.len()).unwrap_or(0);
        let status = self
            .command(&args)
            .stdout(open(&out)?)
            .stderr(stderr)
            .status()
            .await
            .map_err(|source| RuntimeError::Spawn { program: self.runsc.path.display().to_string(), source })?;
        if !status.success() {
            let said = std::fs::read(&err).unwrap_or_default();
            let said = String::from_utf8_lossy(said.get(before as usize..).unwrap_or_default()).into_owned();
            if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&err) {
                let _ = f.set_len(before);
            }
            let tail: Vec<&str> = said.lines().rev().take(5).collect();
            let message = tail.into_iter().rev().collect::<Vec<_>>().join(" / ");
            return Err(RuntimeError::Refused { operation: "runsc restore".into(), message });
        }
        Ok(())
    }

    /// Makes the door of a sandbox whose first process is the hatch.
    fn door(&self, dir: &SandboxDir) -> Result<PathBuf, RuntimeError> {
        crate::hatch::make_door(dir).map_err(|source| RuntimeError::Prepare { path: crate::hatch::door(dir), source })
    }

    /// The probed `runsc`.
    pub fn runsc(&self) -> &RunscInfo {
        &self.runsc
    }

    /// The platform in use.
    pub fn platform(&self) -> Platform {
        self.platform
    }

    /// The cgroup of sandbox `id`.
    pub fn cgroup(&self, id: &SandboxId) -> Cgroup {
        Cgroup::new(&self.cgroup_mount, self.cgroups, &format!("/tartarus/{}", self.cid(id)))
    }

    fn base_args(&self) -> Vec<String> {
        vec!["--root".into(), self.state_root.display().to_string()]
    }

    /// Flags that shape a new sandbox (given to `run` and `restore`). With a network namespace
    /// (Styx), gVisor uses the network of the namespace it is started in (`--network=host`):
    /// the netstack mode (`--network=sandbox`) of the runsc builds Debian offers refuses to start
    /// on kernels 6.x, and `host` inside the namespace confines it just the same.
    fn sandbox_args(&self, dir: &SandboxDir, networked: bool) -> Vec<String> {
        let network = networked.then(|| self.network_mode());
        sandbox_flags(&self.state_root, self.platform, network, Some(overlay_flag(&self.runsc, &dir.writable())))
    }

    fn command(&self, args: &[String]) -> Command {
        let mut c = Command::new(&self.runsc.path);
        c.args(self.base_args()).args(args).stdin(Stdio::null()).kill_on_drop(true);
        c
    }

    /// Runs `runsc --root … <args>` and returns its stdout, or its stderr as the refusal.
    async fn runsc_ok(&self, operation: &str, args: &[String]) -> Result<String, RuntimeError> {
        let out = self
            .command(args)
            .output()
            .await
            .map_err(|source| RuntimeError::Spawn { program: self.runsc.path.display().to_string(), source })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let message = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            Err(RuntimeError::Refused { operation: format!("runsc {operation}"), message })
        }
    }

    fn not_found(e: &RuntimeError) -> bool {
        matches!(e, RuntimeError::Refused { message, .. } if message.contains("does not exist") || message.contains("not found"))
    }

    fn prepare(&self, spec: &LaunchSpec, dir: &SandboxDir) -> Result<(), RuntimeError> {
        dir.create().map_err(|source| RuntimeError::Prepare { path: dir.root().to_owned(), source })?;
        let cgroup = self.cgroup(&spec.id);
        cgroup.create(&spec.resources, crate::erinyes::PIDS_MAX)?;
        let config = bundle::config(spec, &self.session_init, &self.hatch, cgroup.rel());
        let path = dir.bundle().join("config.json");
        crate::lethe::write_atomic(&path, config.as_bytes()).map_err(|source| RuntimeError::Prepare { path, source })
    }
}

#[async_trait]
impl Runtime for Gvisor {
    fn name(&self) -> &'static str {
        "gvisor"
    }

    fn network_mode(&self) -> &'static str {
        Gvisor::network_mode(self).describe()
    }

    fn describe(&self) -> String {
        format!(
            "runsc {} ({}), platform {}, hatch {}",
            self.runsc.version,
            self.runsc.path.display(),
            self.platform.as_str(),
            crate::hatch::PROTOCOL
        )
    }

    async fn create(&self, spec: &LaunchSpec, dir: &SandboxDir) -> Result<MainCommand, RuntimeError> {
        self.prepare(spec, dir)?;
        let mut argv = vec![self.runsc.path.display().to_string()];
        argv.extend(self.sandbox_args(dir, spec.netns.is_some()));
        argv.extend(["run".into(), "--bundle".into(), dir.bundle().display().to_string(), spec.id.to_string()]);
        let stdin = if spec.door { Some(self.door(dir)?) } else { None };
        Ok(MainCommand { netns: spec.netns.clone(), stdin, ..MainCommand::new(argv) })
    }

    async fn exec(&self, id: &SandboxId, spec: &ExecSpec) -> Result<tokio::process::Child, RuntimeError> {
        // The process goes to runsc as an OCI process file: flags would split values on commas.
        let process = bundle::exec_process(spec);
        let file = spec.scratch.with_extension("process.json");
        crate::lethe::write_atomic(&file, process.as_bytes())
            .map_err(|source| RuntimeError::Prepare { path: file.clone(), source })?;
        let args = [
            "exec".into(),
            format!("--process={}", file.display()),
            format!("--internal-pid-file={}", spec.scratch.with_extension("pid").display()),
            self.cid(id).to_string(),
        ];
        self.command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| RuntimeError::Spawn { program: self.runsc.path.display().to_string(), source })
    }

    async fn kill_exec(&self, id: &SandboxId, spec: &ExecSpec) -> Result<(), RuntimeError> {
        let pid_file = spec.scratch.with_extension("pid");
        let Some(pid) = std::fs::read_to_string(&pid_file).ok().and_then(|p| p.trim().parse::<u32>().ok()) else {
            return Ok(()); // never started inside the sandbox
        };
        let args = ["kill".into(), format!("--pid={pid}"), self.cid(id).to_string(), "KILL".into()];
        match self.runsc_ok("kill", &args).await {
            Err(RuntimeError::Refused { message, .. }) if message.contains("no such process") => Ok(()),
            other => other.map(drop),
        }
    }

    async fn kill(&self, id: &SandboxId, signal: i32, all: bool) -> Result<(), RuntimeError> {
        let mut args = vec!["kill".to_owned()];
        if all {
            args.push("--all".into());
        }
        args.extend([self.cid(id).to_string(), signal.to_string()]);
        match self.runsc_ok("kill", &args).await {
            Err(e) if Self::not_found(&e) => Err(RuntimeError::NotFound(id.clone())),
            other => other.map(drop),
        }
    }

    async fn pause(&self, id: &SandboxId) -> Result<(), RuntimeError> {
        self.runsc_ok("pause", &["pause".into(), self.cid(id).to_string()]).await.map(drop)
    }

    async fn resume(&self, id: &SandboxId) -> Result<(), RuntimeError> {
        self.runsc_ok("resume", &["resume".into(), self.cid(id).to_string()]).await.map(drop)
    }

    async fn checkpoint(&self, id: &SandboxId, image_dir: &Path, keep_running: bool) -> Result<(), RuntimeError> {
        std::fs::create_dir_all(image_dir)
            .map_err(|source| RuntimeError::Prepare { path: image_dir.to_owned(), source })?;
        // Uncompressed: Nyx and Hypnos pack the image with zstd, which is both smaller and
        // faster to restore from than runsc's own flate.
        let mut args = vec!["checkpoint".to_owned()];
        if keep_running {
            args.push("--leave-running".into());
        }
        args.extend([
            "--compression=none".into(),
            format!("--image-path={}", image_dir.display()),
            self.cid(id).to_string(),
        ]);
        self.runsc_ok("checkpoint", &args).await.map(drop)
    }

    async fn restore(
        &self,
        spec: &LaunchSpec,
        dir: &SandboxDir,
        image_dir: &Path,
    ) -> Result<MainCommand, RuntimeError> {
        // Snapshots are taken while the hatch waits: the bundle restored is a door bundle too,
        // and `runsc restore` runs to the sandbox's end like `runsc run`.
        let door = LaunchSpec { door: true, ..spec.clone() };
        self.prepare(&door, dir)?;
        let mut argv = vec![self.runsc.path.display().to_string()];
        argv.extend(self.sandbox_args(dir, spec.netns.is_some()));
        argv.extend([
            "restore".into(),
            format!("--image-path={}", image_dir.display()),
            "--bundle".into(),
            dir.bundle().display().to_string(),
            spec.id.to_string(),
        ]);
        Ok(MainCommand { netns: spec.netns.clone(), stdin: Some(self.door(dir)?), ..MainCommand::new(argv) })
    }

    async fn wake(&self, spec: &LaunchSpec, dir: &SandboxDir, image_dir: &Path) -> Result<MainCommand, RuntimeError> {
        // The bundle is the one it was booted with; its init goes on where it stopped.
        self.prepare(spec, dir)?;
        self.restore_detached(&spec.id, dir, image_dir).await?;
        let mut argv = vec![self.runsc.path.display().to_string()];
        argv.extend(self.base_args());
        argv.extend(["wait".into(), spec.id.to_string()]);
        Ok(MainCommand { wait_status: true, ..MainCommand::new(argv) })
    }

    async fn hand_over(&self, pooled: &SandboxId, spec: &LaunchSpec, _dir: &SandboxDir) -> Result<(), RuntimeError> {
        let dir_path = self.alias_dir();
        std::fs::create_dir_all(&dir_path)
            .map_err(|source| RuntimeError::Prepare { path: dir_path.clone(), source })?;
        let file = dir_path.join(spec.id.as_str());
        crate::lethe::write_atomic(&file, pooled.as_str().as_bytes())
            .map_err(|source| RuntimeError::Prepare { path: file, source })?;
        self.aliases.lock().expect("lock").insert(spec.id.clone(), pooled.clone());
        self.cgroup(&spec.id).create(&spec.resources, crate::erinyes::PIDS_MAX)?;
        Ok(())
    }

    async fn status(&self, id: &SandboxId) -> Result<Option<RuntimeStatus>, RuntimeError> {
        let out = match self.runsc_ok("state", &["state".into(), self.cid(id).to_string()]).await {
            Err(e) if Self::not_found(&e) => return Ok(None),
            other => other?,
        };
        let state: serde_json::Value = serde_json::from_str(&out).map_err(|e| RuntimeError::Refused {
            operation: "runsc state".into(),
            message: format!("unreadable output: {e}"),
        })?;
        Ok(match state["status"].as_str() {
            Some("creating") | Some("created") => Some(RuntimeStatus::Creating),
            Some("running") => Some(RuntimeStatus::Running),
            Some("paused") => Some(RuntimeStatus::Paused),
            Some("stopped") => Some(RuntimeStatus::Stopped),
            _ => None,
        })
    }

    async fn stats(&self, id: &SandboxId, dir: &SandboxDir) -> Result<SandboxStats, RuntimeError> {
        let cgroup = self.cgroup(id);
        let writable = dir.writable();
        let stats = tokio::task::spawn_blocking(move || {
            let mut s = cgroup.stats();
            s.disk_bytes = crate::lethe::usage(&cgroup.procs(), &writable);
            s
        });
        Ok(stats.await.expect("stats task panicked"))
    }

    async fn destroy(&self, id: &SandboxId) -> Result<SandboxStats, RuntimeError> {
        let cid = self.cid(id);
        let deleted = match self.runsc_ok("delete", &["delete".into(), "--force".into(), cid.to_string()]).await {
            Err(e) if !Self::not_found(&e) => Err(e),
            _ => Ok(()),
        };
        // The cgroup goes whatever runsc said: an empty one is removable, a busy one says so.
        let cgroup = self.cgroup(id);
        let stats = tokio::task::spawn_blocking(move || cgroup.remove()).await.expect("cgroup task panicked")?;
        deleted?;
        if cid != *id {
            let _ = std::fs::remove_file(self.alias_dir().join(id.as_str()));
            self.aliases.lock().expect("lock").remove(id);
        }
        Ok(stats)
    }
}

/// The handovers written down in `dir` (unreadable entries are skipped).
fn read_aliases(dir: &Path) -> HashMap<SandboxId, SandboxId> {
    let Ok(entries) = std::fs::read_dir(dir) else { return HashMap::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let id = SandboxId::parse(e.file_name().to_str()?).ok()?;
            let pooled = SandboxId::parse(std::fs::read_to_string(e.path()).ok()?.trim()).ok()?;
            Some((id, pooled))
        })
        .collect()
}
