//! Runs one sandbox with `runsc run` directly, outside any realm, for `doctor` and `bench`.
//!
//! The bundle is the one the gVisor runtime writes ([`bundle::config`]), so a raw run differs
//! from a realm's only by what the realm adds around it. Each run gets its own cgroup under a
//! parent of the caller's choosing, which `runsc` creates and removes; the empty parent is
//! removed by [`remove_cgroup`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tartarus_core::{Resources, SandboxId};
use tartarus_hecatoncheir::runtime::gvisor::{self, bundle, Platform, RunscInfo};
use tartarus_hecatoncheir::runtime::{env_list, LaunchSpec};

/// Where cgroup hierarchies are mounted.
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// The platform the gVisor runtime chooses by itself.
pub fn default_platform(info: &RunscInfo) -> Platform {
    Platform::auto(info)
}

/// Writes `dir/config.json`: `command` over `rootfs`, default resources, cgroup `cgroup`.
pub fn write_bundle(dir: &Path, rootfs: &Path, command: &[&str], cgroup: &str) -> std::io::Result<()> {
    let command = command.iter().map(|s| s.to_string()).collect();
    write(dir, rootfs, Some(command), false, cgroup)
}

/// Writes `dir/config.json` for a session (kept up by the host's busybox, as the realm's are),
/// or with `door` for a sandbox whose first process is the hatch: the bundle a Nyx snapshot is
/// restored with.
pub fn write_session_bundle(dir: &Path, rootfs: &Path, door: bool, cgroup: &str) -> std::io::Result<()> {
    write(dir, rootfs, None, door, cgroup)
}

fn write(dir: &Path, rootfs: &Path, command: Option<Vec<String>>, door: bool, cgroup: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let spec = LaunchSpec {
        id: SandboxId::generate(),
        rootfs: rootfs.to_owned(),
        command,
        env: env_list([&BTreeMap::new()]),
        workdir: "/".into(),
        user: (0, 0),
        resources: Resources::default(),
        netns: None,
        door,
    };
    // The hatch, written once beside the bundles (only door bundles mount it).
    let hatch = dir.parent().unwrap_or(dir).join("tartarus-hatch");
    if door {
        tartarus_hecatoncheir::hatch::install(&hatch)?;
    }
    std::fs::write(dir.join("config.json"), bundle::config(&spec, Path::new("/bin/busybox"), &hatch, cgroup))
}

/// One `runsc run`, as asked.
#[derive(Debug, Clone)]
pub struct RawRun<'a> {
    /// The `runsc` binary.
    pub runsc: &'a Path,
    /// `--root`: runsc's state directory for this run.
    pub root: &'a Path,
    /// `--platform`.
    pub platform: Platform,
    /// An `--overlay2=…` flag, if any.
    pub overlay: Option<String>,
    /// The bundle directory.
    pub bundle: &'a Path,
    /// The container id.
    pub id: &'a str,
    /// Kill it after this long.
    pub limit: Duration,
}

/// How a raw run went.
#[derive(Debug, Clone)]
pub struct RawOutcome {
    /// From spawning `runsc` to its exit (or to giving up).
    pub elapsed: Duration,
    /// What it printed on stdout.
    pub stdout: String,
    /// `None` when it exited 0; otherwise why not, with the end of its stderr.
    pub failure: Option<String>,
}

impl RawRun<'_> {
    /// The argv after the program.
    pub fn args(&self) -> Vec<String> {
        let mut a = gvisor::sandbox_flags(self.root, self.platform, None, self.overlay.clone());
        a.extend(["run".to_owned(), "--bundle".to_owned(), self.bundle.display().to_string(), self.id.to_owned()]);
        a
    }

    /// Runs it to the end (or to the limit, then kills it and deletes what is left).
    pub async fn run(&self) -> RawOutcome {
        let mut cmd = tokio::process::Command::new(self.runsc);
        cmd.args(self.args()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let start = Instant::now();
        let out = tokio::time::timeout(self.limit, cmd.output()).await;
        let elapsed = start.elapsed();
        let (stdout, failure) = match out {
            Err(_) => (String::new(), Some(format!("no exit after {}", humantime::format_duration(self.limit)))),
            Ok(Err(e)) => (String::new(), Some(format!("cannot run {}: {e}", self.runsc.display()))),
            Ok(Ok(o)) => {
                let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
                let failure = (!o.status.success()).then(|| {
                    let stderr = String::from_utf8_lossy(&o.stderr);
                    match tail(&stderr, 3) {
                        t if t.is_empty() => format!("runsc {}", o.status),
                        t => format!("runsc {}: {t}", o.status),
                    }
                });
                (stdout, failure)
            }
        };
        if failure.is_some() {
            self.force_delete().await;
        }
        RawOutcome { elapsed, stdout, failure }
    }

    /// `runsc delete --force`, best effort: a run that failed or was killed may leave a sandbox.
    async fn force_delete(&self) {
        let _ = tokio::process::Command::new(self.runsc)
            .args([
                "--root".to_owned(),
                self.root.display().to_string(),
                "delete".into(),
                "--force".into(),
                self.id.into(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
}

/// Removes the cgroup `rel` (e.g. `/tartarus-bench`) from every hierarchy, best effort: only
/// empty cgroups can be removed, so a cgroup still in use stays.
pub fn remove_cgroup(rel: &str) {
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() || rel.split('/').any(|c| c == "..") {
        return;
    }
    let mount = Path::new(CGROUP_MOUNT);
    let _ = std::fs::remove_dir(mount.join(rel));
    if let Ok(entries) = std::fs::read_dir(mount) {
        for e in entries.flatten() {
            let p: PathBuf = e.path().join(rel);
            let _ = std::fs::remove_dir(p);
        }
    }
}

/// The last `n` non-empty lines of `text`, joined by ` | ` and cut to 400 characters.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let joined = lines[lines.len().saturating_sub(n)..].join(" | ");
    let count = joined.chars().count();
    if count <= 400 {
        joined
    } else {
        format!("…{}", joined.chars().skip(count - 399).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails() {
        assert_eq!(tail("a\n\nb\nc\nd\n", 3), "b | c | d");
        assert_eq!(tail("", 3), "");
        let long = "x".repeat(1000);
        let t = tail(&long, 3);
        assert_eq!(t.chars().count(), 400);
        assert!(t.starts_with('…'));
    }

    #[test]
    fn argv() {
        let run = RawRun {
            runsc: Path::new("/usr/bin/runsc"),
            root: Path::new("/tmp/r"),
            platform: Platform::Ptrace,
            overlay: Some("--overlay2=root:memory".into()),
            bundle: Path::new("/tmp/b"),
            id: "x-1",
            limit: Duration::from_secs(1),
        };
        assert_eq!(
            run.args().join(" "),
            "--root /tmp/r --platform=ptrace --network=none --overlay2=root:memory run --bundle /tmp/b x-1"
        );
    }

    #[test]
    fn bundles_run_the_command() {
        let dir = tempfile::tempdir().unwrap();
        write_bundle(dir.path(), Path::new("/rootfs"), &["echo", "hi"], "/tartarus-bench/x").unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
        assert_eq!(v["process"]["args"], serde_json::json!(["echo", "hi"]));
        assert_eq!(v["root"]["path"], "/rootfs");
        assert_eq!(v["linux"]["cgroupsPath"], "/tartarus-bench/x");
    }
}
